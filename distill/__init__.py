"""distill: distil the reasoning of a large teacher model into a small student.

Stages (each a command of the `distill` CLI, each reading what the previous one wrote):
generate → filter → train → grpo → eval. The teacher cache (`distill.cache`) is the contract
between the teacher stage and everything after it.

This module imports nothing heavy, so that `distill --help` stays instant.
"""

__version__ = "0.1.0"
