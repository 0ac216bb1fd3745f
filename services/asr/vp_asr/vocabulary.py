"""A robot's vocabulary: ``vocabulary.txt`` in its folder (one term per line, ``#`` comments) plus
``asr.vocabulary`` from its config. The file is re-read when it changes (checked on each new call)."""

from __future__ import annotations

from pathlib import Path

import structlog

from voiceplatform.config import AsrConfig

log = structlog.get_logger("vp_asr.vocabulary")

FILE_NAME = "vocabulary.txt"
MAX_TERMS = 200
MAX_TERM_CHARS = 80


def parse_terms(text: str) -> list[str]:
    terms: list[str] = []
    for line in text.splitlines():
        term = " ".join(line.split("#", 1)[0].split())
        if term and len(term) <= MAX_TERM_CHARS and term not in terms:
            terms.append(term)
    return terms[:MAX_TERMS]


class VocabularyFiles:
    def __init__(self) -> None:
        self._cache: dict[Path, tuple[float, int, list[str]]] = {}

    def terms(self, robot_dir: Path) -> list[str]:
        path = robot_dir / FILE_NAME
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._cache.pop(path, None)
            return []
        except OSError as exc:
            log.warning("asr.vocabulary_unreadable", path=str(path), error=type(exc).__name__)
            return []
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (stat.st_mtime, stat.st_size):
            return cached[2]
        try:
            terms = parse_terms(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("asr.vocabulary_unreadable", path=str(path), error=type(exc).__name__)
            return []
        self._cache[path] = (stat.st_mtime, stat.st_size, terms)
        log.info("asr.vocabulary_loaded", path=str(path), terms=len(terms))
        return terms

    def with_vocabulary(self, config: AsrConfig, robot_dir: Path) -> AsrConfig:
        """``config`` with the file's terms added to ``asr.vocabulary`` (config terms first)."""
        file_terms = self.terms(robot_dir)
        if not file_terms:
            return config
        merged = list(dict.fromkeys([*config.vocabulary, *file_terms]))
        return config.model_copy(update={"vocabulary": merged})
