"""The clock seam's pure helpers."""

from __future__ import annotations

import calendar
import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from wattchecker_client.clock import utc_epoch


@given(st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)))
def test_utc_epoch_is_timegm_to_the_second(when):
    """Whole seconds, the fraction dropped as the meter and the files drop it, before 1970 too."""
    assert utc_epoch(when) == calendar.timegm(when.timetuple())
