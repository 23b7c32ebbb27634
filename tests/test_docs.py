"""README and the sample settings stay true to the code: every setting, every column, both commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

from irm_connector.schema import streams

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def settings_read_by_the_code() -> set[str]:
    text = "".join((ROOT / "irm_connector" / name).read_text(encoding="utf-8") for name in ("settings.py", "setting_forms.py"))
    names = set(re.findall(r'(?:get|duration|number)\("([A-Z][A-Z0-9_]+)"', text))
    names |= set(re.findall(r'SettingsError\(\s*"([A-Z][A-Z0-9_]+)"', text))
    assert len(names) > 20, names
    return names


#: Set by the platform, not by whoever deploys: the App Service site name (in telemetry as the role), and where
#: the host's managed identity endpoint is (reached without a proxy).
PLATFORM_VARIABLES = {"WEBSITE_SITE_NAME", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"}


def environment_read_anywhere() -> set[str]:
    """Every name the package reads from the environment by a literal or a module constant, beyond the settings
    module: the identity, cloud, TLS, telemetry and host settings read where they are used."""
    names = settings_read_by_the_code()
    for path in (ROOT / "irm_connector").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r'(?:environ\.get|getenv|env\.get|\.get|\.raw)\(\s*"([A-Z][A-Z0-9_]+)"', text))
        # names read in a loop (the proxy and CA variables): for name in ("HTTPS_PROXY", "HTTP_PROXY")
        for group in re.findall(r"for \w+ in \(([^)]*)\)", text):
            names |= set(re.findall(r'"([A-Z][A-Z0-9]*_[A-Z0-9_]+)"', group))
        # constants naming a setting: ALL_CAPS (APPLICATIONINSIGHTS_..., PYTHON_...) or the host's Azure...__ form
        names |= set(re.findall(r'^[A-Z_]+\s*(?::\s*\w+)?\s*=\s*"([A-Z][A-Z0-9]*_[A-Z0-9_]+|Azure\w+__\w*)"', text, re.M))
    assert {"AZURE_AUTHORITY_HOST", "PYTHON_ENABLE_DEBUG_LOGGING", "AzureFunctionsJobHost__functionTimeout"} <= names
    return names - PLATFORM_VARIABLES


def test_every_setting_is_documented_in_readme() -> None:
    # a family is documented as PREFIX* (`AZURE_CLIENT_*`, `AzureFunctionsJobHost__extensions__queues__*`)
    families = tuple(re.findall(r"`([A-Za-z][A-Za-z0-9_]*)\*`", README))
    missing = {n for n in environment_read_anywhere() if f"`{n}`" not in README and not n.startswith(families)}
    assert not missing, f"settings missing from README: {sorted(missing)}"


def test_every_setting_is_in_the_sample_settings() -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    missing = settings_read_by_the_code() - set(sample) - {"O365_CLIENT_CERTIFICATE"}
    assert not missing, f"settings missing from local.settings.sample.json: {sorted(missing)}"
    assert sample["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"


def test_every_output_column_is_documented_in_readme() -> None:
    for schema in streams().values():
        assert f"`{schema.table}`" in README or f"**`{schema.table}`**" in README
        for name in schema.names:
            assert f"`{name}`" in README, f"{schema.table}.{name} is not in README"


def test_quick_start_has_exactly_the_two_commands_and_ci_runs_the_test_one() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_deploy_page_documents_every_parameter_and_azd_variable() -> None:
    section = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    main = (ROOT / "infra" / "main.bicep").read_text(encoding="utf-8")
    params = re.findall(r"^param (\w+) ", main, re.MULTILINE)
    assert len(params) > 30
    missing = [p for p in params if f"`{p}`" not in section]
    assert not missing, f"parameters missing from docs/deploy.md: {missing}"
    mapped = json.loads((ROOT / "infra" / "main.parameters.json").read_text())["parameters"]
    variables = {v for p in mapped.values() for v in re.findall(r"\$\{(\w+)", p["value"])}
    missing = sorted(v for v in variables if f"`{v}`" not in section)
    assert not missing, f"azd variables missing from docs/deploy.md: {missing}"
    outputs = re.findall(r"^output (\w+) ", main, re.MULTILINE)
    assert not [o for o in outputs if f"`{o}`" not in section], outputs
    for script in re.findall(r"scripts/[\w/-]+\.sh", section):
        assert (ROOT / script).is_file(), script


def test_readme_and_docs_links_resolve() -> None:
    """Every relative link of README and docs/ names a file that exists, and an anchor a heading of it."""
    def anchors(path: Path) -> set[str]:
        heads = re.findall(r"^#+ (.*)$", path.read_text(encoding="utf-8"), re.MULTILINE)
        explicit = re.findall(r'<a id="([^"]+)">', path.read_text(encoding="utf-8"))
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads} | set(explicit)

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken: list[str] = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
                broken.append(f"{page.name}: {target}")
    assert not broken, broken


def test_readme_stays_short() -> None:
    """README is the front door: the details live in docs/."""
    assert len(README.encode("utf-8")) < 26_500


def _health_query(text: str) -> str:
    """The first health query in ``text``: from ``IRMConnectorHealth_CL`` to the end of its block, comments out."""
    start = text.index("IRMConnectorHealth_CL\n")
    block = re.split(r"\n```|\nKQL\n", text[start:])[0]
    return " ".join(line.strip() for line in block.splitlines() if not line.strip().startswith("//"))


def test_every_verify_step_shows_the_same_health_query() -> None:
    """README's step 5, the Sentinel connector page and what ``azd up`` prints say the same: the hook's copy grouped
    by content type alone, so in a workspace two tenants' connectors feed, one tenant's failing deployment showed
    the other's healthy rows."""
    page = json.loads((ROOT / "sentinel" / "dataconnectors" / "IRMConnector.json").read_text(encoding="utf-8"))
    steps = page["instructionSteps"]
    [verify] = [step for step in steps if step["title"].endswith("Verify")]
    shown = {
        "README.md": _health_query(README.split("**5. Verify.**", 1)[1]),
        "the connector page": _health_query(verify["instructions"][0]["parameters"]["content"]),
        "scripts/hooks/postprovision.sh": _health_query(
            (ROOT / "scripts" / "hooks" / "postprovision.sh").read_text(encoding="utf-8")
        ),
    }
    assert "by O365TenantId, ContentType" in shown["README.md"]
    assert len(set(shown.values())) == 1, shown


def test_every_health_query_in_the_docs_tells_the_tenants_apart() -> None:
    """A workspace may hold the health rows of several tenants' connectors: a query of them that neither groups nor
    shows by tenant hid a stopped one behind the others' rows (docs/operations.md's failed runs and blobs per hour)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [
        (page.name, block)
        for page in pages
        for block in re.findall(r"```(?:kusto|kql)\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
        if "IRMConnectorHealth_CL" in block
    ]
    assert len(blocks) >= 4
    assert [(name, block) for name, block in blocks if "O365TenantId" not in block] == []


def test_the_connector_page_signs_in_to_the_azure_cli_for_the_hooks() -> None:
    """The azd hooks use the Azure CLI (the grant's role check, a soft-deleted vault): a page that signed in to
    azd alone had a Global Administrator's `azd up` skip the grant and say no admin role was found."""
    page = json.loads((ROOT / "sentinel" / "dataconnectors" / "IRMConnector.json").read_text(encoding="utf-8"))
    steps = page["instructionSteps"]
    deploy = steps[0]["instructions"][0]["parameters"]["content"]
    assert "az login" in deploy and deploy.index("az login") < deploy.index("azd up")
    assert '--principal-id "$(azd env get-value UAMI_PRINCIPAL_ID)"' in steps[1]["description"]
