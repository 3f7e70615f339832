"""Patients' sex and age, read the same way from every source, and the age bands figures are given by.

Every table has a ``sex`` column (``female``, ``male`` or ``other``; NA when unknown) and an ``age``
column (years, a float; NA when unknown). Sources write them from their own spellings: ``F``, ``M``,
``Female``, ``Male``, ``O`` (DICOM's PatientSex and the publishers' CSVs) and ages in years or as
DICOM age strings (``045Y``, ``006M``, ``010W``, ``003D``). Nothing here drops an image: a value that
cannot be read is an error for the caller to report with its row.

Example:
    >>> read_sex("F"), read_sex("Male"), read_sex("unknown")
    ('female', 'male', <NA>)
    >>> read_age("045Y"), read_age("006M"), read_age("61")
    (45.0, 0.5, 61.0)
    >>> age_band(61.0, [40, 60, 80])
    '60-79'
"""
from __future__ import annotations

import re
from collections import Counter

import pandas as pd

from tfmed.errors import count_noun
from tfmed.progress import log

DEMOGRAPHIC_COLUMNS = ("sex", "age")
SEXES = ("female", "male", "other")
MAX_AGE = 130
UNKNOWN = ("", "u", "unknown", "unk", "nan", "na", "n/a", "none")
_SEX_WORDS = {"f": "female", "female": "female", "w": "female", "woman": "female",
              "m": "male", "male": "male", "man": "male", "o": "other", "other": "other"}
_DICOM_AGE = re.compile(r"^(\d{3})([DWMY])$")
_UNITS_PER_YEAR = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def read_sex(text) -> str | type(pd.NA):
    """``female``, ``male`` or ``other`` from a source's spelling; NA when empty or unknown.

    Raises:
        ValueError: a value that names no sex, with the spellings understood.

    Example:
        >>> read_sex(" o ")
        'other'
    """
    word = "" if text is None or text is pd.NA else str(text).strip().lower()
    if word in UNKNOWN:
        return pd.NA
    if word not in _SEX_WORDS:
        raise ValueError(f"sex {text!r} is not F, M or O (female, male, other)")
    return _SEX_WORDS[word]


def read_age(text) -> float | type(pd.NA):
    """The age in years from a number or a DICOM age string (``045Y``, ``018M``); NA when empty or unknown.

    Raises:
        ValueError: not a number, or outside 0 to 130 years.

    Example:
        >>> read_age("003D") < 0.01, read_age("")
        (True, <NA>)
    """
    word = "" if text is None or text is pd.NA else str(text).strip()
    if word.lower() in UNKNOWN:
        return pd.NA
    match = _DICOM_AGE.match(word.upper())
    try:
        years = int(match.group(1)) / _UNITS_PER_YEAR[match.group(2)] if match else float(word)
    except ValueError:
        raise ValueError(f"age {text!r} is not a number of years (e.g. 61) or a DICOM age (e.g. 061Y)") from None
    if not 0 <= years <= MAX_AGE:
        raise ValueError(f"age {text!r} is outside 0-{MAX_AGE} years")
    return float(years)


def read_demographics(sex, age, problems: list) -> dict:
    """A record's ``sex`` and ``age`` from a source's texts; a value that cannot be read is appended to
    ``problems`` as (problem, fix) and left NA (so a manifest's row is refused with its reason).

    Example:
        >>> problems = []
        >>> read_demographics("F", "two", problems)["sex"], problems[0][0]
        ('female', "age 'two' is not a number of years (e.g. 61) or a DICOM age (e.g. 061Y)")
    """
    record = {}
    for name, reader, text, fix in (("sex", read_sex, sex, "write F, M or O, or leave it empty when unknown"),
                                    ("age", read_age, age, "write the age in years, or leave it empty when unknown")):
        try:
            record[name] = reader(text)
        except ValueError as error:
            problems.append((str(error), fix))
            record[name] = pd.NA
    return record


def published_demographics(sex, age, unreadable: Counter) -> dict:
    """Like :func:`read_demographics` for a publisher's file, where a few values are known to be wrong
    (ChestX-ray14 lists ages of 148 to 414 years): such a value is counted in ``unreadable`` and read as
    unknown, keeping the image.

    Example:
        >>> unreadable = Counter()
        >>> published_demographics("M", "414", unreadable), unreadable
        ({'sex': 'male', 'age': <NA>}, Counter({"age '414' is outside 0-130 years": 1}))
    """
    problems = []
    record = read_demographics(sex, age, problems)
    unreadable.update(problem for problem, _ in problems)
    return record


def unreadable_note(path, unreadable: Counter) -> str | None:
    """One sentence on the values :func:`published_demographics` read as unknown (None when there were none).

    Example:
        >>> unreadable_note("Data_Entry_2017.csv", Counter({"age '414' is outside 0-130 years": 1}))
        "Data_Entry_2017.csv: 1 value read as unknown (age '414' is outside 0-130 years)"
    """
    if not unreadable:
        return None
    total = sum(unreadable.values())
    shown = sorted(unreadable, key=lambda text: (-unreadable[text], text))
    listed = "; ".join(f"{text}" + (f" x{unreadable[text]}" if unreadable[text] > 1 else "") for text in shown[:5])
    more = f"; and {len(shown) - 5} more kinds" if len(shown) > 5 else ""
    return f"{path}: {count_noun(total, 'value')} read as unknown ({listed}{more})"


def log_unreadable(path, unreadable: Counter) -> None:
    """Log :func:`unreadable_note` when some values were read as unknown."""
    note = unreadable_note(path, unreadable)
    if note:
        log(note)


def age_band(age, edges: list[int]) -> str | type(pd.NA):
    """The band of ``edges`` (increasing whole years) an age falls in: ``0-39``, ``40-59``, ..., ``80+``.

    Example:
        >>> [age_band(a, [18, 65]) for a in (17.9, 18, 64.5, 90)]
        ['0-17', '18-64', '18-64', '65+']
    """
    if age is None or age is pd.NA or age != age:
        return pd.NA
    lower = 0
    for edge in edges:
        if age < edge:
            return f"{lower}-{edge - 1}"
        lower = edge
    return f"{lower}+"
