"""Model text is untrusted: no answer may make the parser backtrack catastrophically or scan quadratically.

Before the fix, a 157-character Qwen2 answer took 17 s and 40,000-character answers 15-35 s. A stuck regex
cannot be interrupted inside the process, so the inputs run in a subprocess with a generous limit (the
parser needs well under a second for all of them)."""
import subprocess
import sys

PROBE = r"""
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import family_names, get_profile
pieces = ["<ref>", "</ref>", "<rbox>(", ")</rbox>", "<rel>", "</rel>", "{<1><2>", "[[1, 2", "[1, ", "(1,2) ",
          "<|box_start|>", "<|object_ref_start|>", "<loc_5>", "<p>", '{"bbox_2d": [1,', "word ", "a" * 64,
          " " * 64, "tank <co-storage", "it is ", '{"a"b', '{"{"', '{"bbox_2d": "\\"}{']
count = 0
for family in family_names():
    profile = get_profile(family)
    parse_answer("<|box_start|>" + "(1,2) " * 40, profile, (512, 512))
    for piece in pieces:
        parse_answer(piece * (40000 // len(piece)), profile, (512, 512))
        count += 1
print(count)
"""


def test_long_adversarial_answers_parse_in_linear_time():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    from geovlm.core.profiles import family_names

    assert int(out.stdout) == len(family_names()) * 23


QWEN25_PROBE = r"""
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile
profile = get_profile("qwen25vl")
keys = parse_answer("{" + '"bbox_2d", ' * 50000, profile, (512, 512))
braces = parse_answer('{"label": "' + "{" * 300000, profile, (512, 512))
labels = parse_answer('[{"bbox_2d": [1, 2, 3, 4], "label": "a {"}, ' * 8000, profile, (512, 512))
print(len(keys.skipped), len(braces.skipped), len(labels.objects))
"""


def test_qwen25_keys_in_one_long_brace_free_stretch_parse_in_linear_time():
    """550,000 characters of `"bbox_2d", ` after one brace: the brace-free `[^{}]*` regex around the key that
    parsing used before rescanned the stretch for every key (quadratic: 0.6, 2.6 and 10 s for 40, 80 and 160
    thousand characters, so minutes here); the scan reads each token once. Also 300,000 braces inside one open
    string and 8,000 objects with a brace in their label."""
    out = subprocess.run([sys.executable, "-c", QWEN25_PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["50000", "0", "8000"]  # every key reported, every labelled box read
