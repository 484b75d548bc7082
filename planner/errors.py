"""The project's one exception tree.

Every error the gateway reports on purpose is a ``GatewayError``; the HTTP layer maps these
classes (never their message text) to OpenAI-shaped error bodies. The tree lives in the planner
because the planner is the dependency-free base that the gateway builds on.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error raised on purpose by vram-gateway."""


class ModelFileError(GatewayError):
    """A model file is missing, unreadable, truncated or not a GGUF file.

    The message is one line that names the file and what is wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class PlanError(GatewayError):
    """The models cannot be placed on the devices as configured.

    ``problems`` holds one line per model that does not fit, each naming the model, the GPU,
    the shortfall in MiB and what would make it fit.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DeviceError(GatewayError):
    """A device inventory is malformed (a bad declared size, an unknown GPU index)."""
