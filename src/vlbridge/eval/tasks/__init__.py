"""Evaluation tasks, one module per benchmark layout, registered by name in `TASKS` with the options they read.

synthetic (the synthetic world's held-out set), synthetic_video (the synthetic video world's), llava (LLaVA's
question/answer JSONL), vqav2 (official VQAv2 JSON), gqa (official GQA JSON), mmbench (MMBench TSV with circular
evaluation).
"""

from __future__ import annotations

from vlbridge.eval.tasks.base import TASKS, Prompt, Task, TaskOption
from vlbridge.eval.tasks.gqa import GQATask
from vlbridge.eval.tasks.llava import LlavaTask
from vlbridge.eval.tasks.mmbench import MMBenchTask
from vlbridge.eval.tasks.synthetic import SyntheticTask
from vlbridge.eval.tasks.synthetic_video import SyntheticVideoTask
from vlbridge.eval.tasks.vqav2 import VQAv2Task

__all__ = [
    "TASKS",
    "GQATask",
    "LlavaTask",
    "MMBenchTask",
    "Prompt",
    "SyntheticTask",
    "SyntheticVideoTask",
    "Task",
    "TaskOption",
    "VQAv2Task",
]
