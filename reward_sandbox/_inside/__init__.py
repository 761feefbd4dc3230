"""Code that runs inside the sandbox. Standard library only: it is executed
by ``python -I -S`` (no site-packages, no environment) and must not import
reward_sandbox or anything outside this folder."""
