#!/usr/bin/env python3
"""Keeps the workspace's manifests in one truth (scripts/test.sh runs it).

The library crates a job depends on (LIBRARY below) spell out their package
fields, dependency versions and lints instead of inheriting them with
`x.workspace = true`: cargo resolves inheritance by walking up from the
crate's directory to a workspace root, which fails when a job crate outside
this workspace reaches them through a symlinked path ("error inheriting
`edition`"). What inheritance gave, this check gives back:

- every external dependency has one version requirement across every
  manifest of the workspace (the root's `[workspace.dependencies]`, every
  member, the external example job), and a library crate's external
  dependencies are all declared in `[workspace.dependencies]`, where their
  reason is written down;
- a library crate's package fields equal the root's `[workspace.package]`
  and its lints equal the root's `[workspace.lints]`;
- a library crate inherits nothing (`workspace = true` nowhere).
"""

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = [
    "engine/protocol",
    "engine/runtime",
    "engine/web",
    "operators",
    "connectors",
]
EXTRA = ["examples/external-job"]
PACKAGE_FIELDS = ["version", "edition", "license", "rust-version"]


def load(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def dependency_tables(manifest):
    """(table name, {name: spec}) for every dependency table of a manifest."""
    for key in ("dependencies", "dev-dependencies", "build-dependencies"):
        if key in manifest:
            yield key, manifest[key]
    for target, t in manifest.get("target", {}).items():
        for key in ("dependencies", "dev-dependencies", "build-dependencies"):
            if key in t:
                yield f"target.{target}.{key}", t[key]
    if "dependencies" in manifest.get("workspace", {}):
        yield "workspace.dependencies", manifest["workspace"]["dependencies"]


def requirement(spec):
    if isinstance(spec, str):
        return spec
    return spec.get("version")


def inherits(value):
    return isinstance(value, dict) and value.get("workspace") is True


def main():
    errors = []
    root = load(ROOT / "Cargo.toml")
    members = root["workspace"]["members"]
    workspace_deps = root["workspace"]["dependencies"]
    local = {
        load(ROOT / m / "Cargo.toml")["package"]["name"] for m in members
    }

    # One version requirement per external dependency.
    seen = {}  # name -> {requirement: [where]}
    for rel in ["."] + members + EXTRA:
        path = ROOT / rel / "Cargo.toml"
        if not path.exists():
            errors.append(f"{rel}/Cargo.toml is missing")
            continue
        manifest = load(path)
        for table, deps in dependency_tables(manifest):
            for name, spec in deps.items():
                package = spec.get("package", name) if isinstance(spec, dict) else name
                if package in local:
                    continue
                req = requirement(spec)
                if req is None:
                    continue  # inherited from [workspace.dependencies]
                where = f"{rel}/Cargo.toml [{table}]"
                seen.setdefault(package, {}).setdefault(req, []).append(where)
    for name, reqs in sorted(seen.items()):
        if len(reqs) > 1:
            listed = "; ".join(
                f'"{r}" in {", ".join(w)}' for r, w in sorted(reqs.items())
            )
            errors.append(f"{name} has more than one version requirement: {listed}")

    # The library crates: explicit, and equal to the root.
    package = root["workspace"]["package"]
    lints = root["workspace"].get("lints", {})
    for rel in LIBRARY:
        manifest = load(ROOT / rel / "Cargo.toml")
        where = f"{rel}/Cargo.toml"
        for field in PACKAGE_FIELDS:
            value = manifest["package"].get(field)
            if inherits(value):
                errors.append(f"{where}: package.{field} is inherited; spell it out")
            elif value != package.get(field):
                errors.append(
                    f"{where}: package.{field} = {value!r}, the workspace has {package.get(field)!r}"
                )
        if inherits(manifest.get("lints")) or manifest.get("lints") != lints:
            errors.append(f"{where}: [lints] must spell out the root's [workspace.lints]")
        for table, deps in dependency_tables(manifest):
            for name, spec in deps.items():
                if inherits(spec):
                    errors.append(f"{where}: [{table}] {name} is inherited; give its version")
                elif name not in local and name not in workspace_deps:
                    errors.append(
                        f"{where}: [{table}] {name} is not in the root's [workspace.dependencies] "
                        "(declare it there, with why)"
                    )

    for e in errors:
        print(f"check-manifests: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
