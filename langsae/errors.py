"""The exceptions a user should see: a bad input, stated in one line, and a task that cannot run here."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line, exit code 2."""


class SkippedTask(UserError):
    """A stage (or part of one) that cannot run in this environment but need not stop a pipeline:
    e.g. a downstream dataset that is not cached on an offline machine. Run alone, it is an error
    like any other; `run_pipeline.py` records it as "skipped" and carries on with the next stage."""


class CorruptArtifact(UserError):
    """An artifact that is missing, truncated or unreadable although the run says it was made: the message
    names the file and the command that remakes it."""
