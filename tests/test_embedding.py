"""The examples in docs/embedding.md run as they stand and print what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks() -> list[str]:
    with open(os.path.join(HERE, "docs", "embedding.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


class EmbeddingDocTests(SynchronousTestCase):
    """Each Python example in the embedding guide is a working program."""

    def _program(self, source: str, *args: str) -> str:
        path = os.path.abspath(self.mktemp()) + ".py"
        with open(path, "w") as f:
            f.write(source)
        done = subprocess.run(
            [sys.executable, path, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=HERE,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def test_two_examples(self) -> None:
        """The guide has the factory example and the whole-service example."""
        self.assertEqual(len(_blocks()), 2)

    def test_factory_alone(self) -> None:
        """The SMTP factory example accepts one message and refuses an unknown user."""
        out = self._program(_blocks()[0])
        self.assertEqual(
            out,
            "from alice@elsewhere.test to bob@example.test: Subject: hello\n"
            "refused: 550 5.1.1 No such user here\n",
        )

    def test_whole_service(self) -> None:
        """The whole-service example delivers one message into Maildir."""
        data = os.path.abspath(self.mktemp())
        out = self._program(_blocks()[1], data)
        self.assertEqual(out, "messages in Bob's Maildir: 1\n")
        self.assertEqual(
            len(
                os.listdir(
                    os.path.join(data, "mail", "mail.example.test", "bob", "new")
                )
            ),
            1,
        )
