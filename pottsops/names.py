"""Names of relaxations and unaries, their aliases, and the indices the kernels use.

The order of RELAXATIONS and UNARIES is the order of the enums in csrc/pottsops/relaxations.h and of
the Triton helper in pottsops/triton/math.py.
"""

RELAXATIONS = (
    "bilinear",
    "quadratic",
    "normalized_quadratic",
    "collision_ce",
    "log_quadratic",
    "collision_divergence",
)
RELAXATION_ALIASES = {"bl": "bilinear", "q": "quadratic", "nq": "normalized_quadratic",
                      "cce": "collision_ce", "lq": "log_quadratic", "cd": "collision_divergence"}

UNARIES = ("cce", "ce", "rce")
UNARY_ALIASES = {"collision_ce": "cce", "collision_cross_entropy": "cce", "cross_entropy": "ce",
                 "reverse_ce": "rce", "reverse_cross_entropy": "rce"}


def _lookup(argument, value, names, aliases):
    name = aliases.get(value, value) if isinstance(value, str) else value
    if name not in names:
        valid = ", ".join(f"{n!r}" for n in (*names, *aliases))
        raise ValueError(f"{argument}: unknown name {value!r}; expected one of {valid}")
    return name


def relaxation_name(value, argument="relaxation"):
    """Canonical long name of a relaxation given by name or alias ('cd' -> 'collision_divergence')."""
    return _lookup(argument, value, RELAXATIONS, RELAXATION_ALIASES)


def relaxation_index(value, argument="relaxation"):
    return RELAXATIONS.index(relaxation_name(value, argument))


def unary_name(value, argument="kind"):
    """Canonical short name of a unary given by name or alias ('cross_entropy' -> 'ce')."""
    return _lookup(argument, value, UNARIES, UNARY_ALIASES)


def unary_index(value, argument="kind"):
    return UNARIES.index(unary_name(value, argument))
