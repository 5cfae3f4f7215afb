"""The one pin of each AI CLI: the release the image installs and its spec was checked against.

`hearth.image.recipes` installs `CliPin.npm` of each; each ProviderSpec records `version` as
its `cli_version`. Bumping a CLI is one edit here, after re-checking its spec (and its
`docs/contracts/` page) against the new release. Data only: no imports from Hearth, so the
image builder can read it without pulling in the rest of the product.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CliPin:
    package: str  # the npm package
    version: str

    @property
    def npm(self) -> str:
        """What `npm install -g` is given: package@version."""
        return f"{self.package}@{self.version}"


# Checked against the npm registry on 2026-11-27.
CLAUDE_CODE = CliPin("@anthropic-ai/claude-code", "2.1.332")
CODEX = CliPin("@openai/codex", "0.171.0")
GEMINI_CLI = CliPin("@google/gemini-cli", "0.61.0")

CLI_PINS = (CLAUDE_CODE, CODEX, GEMINI_CLI)
