"""The docs' example runner itself: a broken example must fail it, a good one pass.

Without these, a runner that ran nothing (or ignored exit codes) would keep every docs
test green while the examples drifted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.runner import ExampleFailed, extract, run_page, runnable

GOOD = """
# A page

<!-- expect: test answer -->
```bash
curl -sS --fail-with-body http://127.0.0.1:8080/v1/chat/completions \\
  -H 'content-type: application/json' \\
  -d '{"model": "assistant", "messages": [{"role": "user", "content": "hello"}]}'
```

```bash
ANSWER=kept
IATROS_API_KEY=$(.venv/bin/iatros keys create --tenant docs --role admin)
```

```bash
test "$ANSWER" = kept
```

```python
import os

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key=os.environ["IATROS_API_KEY"])
print(client.models.list().data[0].id)
```

<!-- skip: it would never end -->
```bash
sleep infinity
```

```text
not run: only bash, python and yaml blocks are
```
"""

BROKEN_MODEL = """
```bash
curl -sS --fail-with-body http://127.0.0.1:8080/v1/chat/completions \\
  -H 'content-type: application/json' \\
  -d '{"model": "no-such-model", "messages": [{"role": "user", "content": "hello"}]}'
```
"""

BROKEN_PYTHON = """
```python
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unknown-key")
client.chat.completions.create(model="assistant", messages=[{"role": "pilot", "content": "x"}])
```
"""

BROKEN_CONFIG = """
```yaml
deployments:
  gpt: {provider: opena, model: gpt-4o}
```
"""

WRONG_OUTPUT = """
<!-- expect: an answer the test model never gives -->
```bash
curl -sS --fail-with-body http://127.0.0.1:8080/v1/models
```
"""


def test_a_good_page_runs_every_marked_block(tmp_path: Path) -> None:
    blocks, _ = extract(GOOD)
    assert [b.language for b in runnable(blocks)] == ["bash", "bash", "bash", "python"]
    assert run_page(GOOD, "good.md", tmp_path) == 4


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (BROKEN_MODEL, "exited 22"),
        (BROKEN_PYTHON, "exited 1"),
        (BROKEN_CONFIG, "unknown provider"),
        (WRONG_OUTPUT, "expected 'an answer the test model never gives'"),
    ],
    ids=["http-error", "python-error", "bad-config", "wrong-output"],
)
def test_a_broken_example_fails_the_runner(sample: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ExampleFailed, match=message):
        run_page(sample, "broken.md", tmp_path)


def test_a_skip_needs_a_reason() -> None:
    with pytest.raises(ExampleFailed, match="needs a reason"):
        extract("<!-- skip: -->\n```bash\ntrue\n```\n")
