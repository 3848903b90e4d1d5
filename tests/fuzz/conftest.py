"""The fuzz suite's hypothesis profile.

Every fuzz test takes its settings from the profile ``tuneloop-fuzz`` (``settings(parent=...)``),
so the suite's size is chosen in one place: by default it runs in well under a minute on one
core; set TUNELOOP_FUZZ_EXAMPLES to run more examples per test (e.g. 2000 for a nightly run).
Other hypothesis tests in the repository keep their own settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from fuzz.support import PROFILE

settings.register_profile(
    PROFILE,
    max_examples=int(os.environ.get("TUNELOOP_FUZZ_EXAMPLES", "500")),
    # A wall-clock deadline fails on a busy machine; support.bounded caps CPU time instead.
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)
