"""The ``mrdpm`` command.

OpenMP threads that spin while waiting (the GNU default) stall each other when the CPU is shared with other jobs,
which slowed a 2-thread run here up to 17-fold; the command line makes them sleep instead, unless the user chose
a policy. This must happen before torch is first imported, hence here.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
