"""Vocabulary of SkySenseGPT's STAR scene-graph data: its relation predicates (from the FIT-RS release)."""

PREDICATES = (
    "over", "not co-storage with", "connect", "parallelly parked on", "intersect", "co-storage with",
    "converge", "parallelly docked at", "adjacent", "within safe distance of", "through", "approach",
    "away from", "randomly parked on", "run along", "isolatedly parked on", "around", "randomly docked at",
    "drive off", "drive toward", "within danger distance of", "supply to", "isolatedly docked at",
    "pass across", "not run along", "slightly emit", "exhaust to", "violently emit", "incorrectly parked on",
    "pass under", "directly transmit electricity to", "indirectly transmit electricity to", "pass through",
    "within same line of", "within different line of", "directly connected to", "indirectly connected to",
    "driving in the same direction with", "driving in the opposite direction with", "driving alongside with",
    "driving in the same lane with", "driving in the different lane with", "working on", "not working on",
    "parked alongside with", "not parked alongside with", "in the same parking with",
    "in the different parking with", "parking in the same apron with", "parking in the different apron with",
    "running along the same taxiway with", "running along the different taxiway with",
    "running along the different runway with", "docking at the same breakwater with",
    "docking at the same dock with", "docking at the different dock with", "docked alongside with",
    "not docked alongside with",
)

# Longest first, so that "not co-storage with" wins over "co-storage with".
PREDICATES_LONGEST_FIRST = tuple(sorted(PREDICATES, key=len, reverse=True))
