"""Root pytest settings shared by tests/ and the doctests in tfmed/."""
import doctest


def pytest_collection_modifyitems(config, items):
    """Docstring examples marked +SKIP throughout (they need a user's data or a trained run)
    are illustrations, not tests: leave them out instead of reporting them as skipped."""
    illustrations = [item for item in items
                     if getattr(item, "dtest", None) is not None
                     and all(example.options.get(doctest.SKIP) for example in item.dtest.examples)]
    if illustrations:
        config.hook.pytest_deselected(items=illustrations)
        items[:] = [item for item in items if item not in illustrations]
