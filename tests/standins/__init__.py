"""Stand-ins for the providers' services, for tests only: each speaks what its pinned CLI
really sends and reads (docs/contracts/), checks what a careful provider checks, and is
served in the fake internet (tests/fake_internet.py) under the provider's own names."""
