"""The sections of BENCHMARKS.md that one benchmark script owns: each sits
between `<!-- NAME: begin ... -->` and `<!-- NAME: end -->`. Standard library
only; imported by the report scripts next to it."""


def markers(name):
    return f"<!-- {name}: begin", f"<!-- {name}: end -->"


def splice(existing, section, name):
    """`existing` with its NAME section replaced by `section` (which carries
    its own markers), or with `section` appended when it has none."""
    begin, end = markers(name)
    if begin in existing and end in existing:
        head, _, rest = existing.partition(begin)
        _, _, tail = rest.partition(end)
        return head + section.rstrip("\n") + tail
    return existing.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
