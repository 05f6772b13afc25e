import os

from hypothesis import settings

# CI runs the property tests on a fixed set of examples, so a red build is always reproducible;
# local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
