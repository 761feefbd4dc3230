"""reward_sandbox: math verification that cannot hang, and sandboxed code runs.

Read THREAT_MODEL.md (next to this file) before relying on it: it says what is
covered, what is not, and which isolation tier covers what.

    from reward_sandbox import run_code, run_many, code_reward, math_reward, isolation
    run_code("print(1)")                          # ExecResult(status="ok", ...)
    code_reward(completion, '{"cases": [{"stdin": "2", "stdout": "4"}]}')
    math_reward("... \\\\boxed{\\\\frac12}", "0.5")     # 1.0
    str(isolation())                              # "bwrap" | "landlock" | "rlimit"

Actors use LocalScorer (in-process pools) or client.RemoteScorer (a sandbox
service started with ``python -m reward_sandbox --bind tcp://*:5557``).
"""

from .api import isolation, run_code, run_many
from .code_reward import code_reward, code_rewards
from .math_reward import math_reward, math_rewards
from .runner import ExecResult, Limits, Runner, RunnerConfig
from .scorer import LocalScorer
from .tiers import Isolation

__all__ = [
    "ExecResult", "Isolation", "Limits", "LocalScorer", "Runner", "RunnerConfig",
    "code_reward", "code_rewards", "isolation", "math_reward", "math_rewards", "run_code", "run_many",
]
