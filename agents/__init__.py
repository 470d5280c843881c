"""gpucp worker agents: the agent and its stream, the task runner, task handlers and a simulated GPU inventory."""

from agents.handlers import Handler, TaskContext, TaskError, load_handler
from agents.inventory import parse_gpus
from agents.runtime import Agent

__all__ = ["Agent", "Handler", "TaskContext", "TaskError", "load_handler", "parse_gpus"]
