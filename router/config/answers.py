"""What a record copies from a model's answers: `log_response` (field names or JSON
pointers) and `prediction` (a JSON pointer), contract section 11."""

from __future__ import annotations

from typing import Any

from router.config.pointer import pointer_problem
from router.config.reader import Reader, join


class AnswersReader(Reader):
    """The keys that point into a model's JSON answers."""

    def answers(self, section: dict[Any, Any], path: str) -> tuple[tuple[str, ...], str | None]:
        """`log_response` and `prediction`."""
        return self.log_response(section, path), self.pointer(section, "prediction", path)

    def log_response(self, section: dict[Any, Any], path: str) -> tuple[str, ...]:
        """Top-level field names, or JSON pointers (`/outputs/0/data`) into the answer."""
        if "log_response" not in section:
            return ()
        found = section["log_response"]
        where = join(path, "log_response")
        if not isinstance(found, list) or not all(isinstance(i, str) and i for i in found):
            message = "must be a list of field names or JSON pointers, like [prediction]"
            self.fail(section, "log_response", where, message)
            return ()
        for i, entry in enumerate(found):
            if entry.startswith("/") and (problem := pointer_problem(entry)):
                self.fail(found, i, f"{where}[{i}]", problem)
        return tuple(found)

    def pointer(self, section: dict[Any, Any], key: str, path: str) -> str | None:
        text = self.string(section, key, path)
        if text is None:
            return None
        problem = pointer_problem(text)
        if problem is not None:
            self.fail(section, key, join(path, key), problem)
            return None
        return text
