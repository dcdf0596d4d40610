"""The loader registry (rag/loaders/registry.py) is the one list of file types: the
loaders, the upload widget, the CLI's folder walk and the README all follow it."""
from __future__ import annotations

import re

import pytest

from rag.loaders import SUPPORTED_EXTENSIONS, DocumentLoadError, load_file
from rag.loaders.registry import BY_EXTENSION, FILE_TYPES, markdown_table, upload_label

from .server_utils import ROOT


def test_every_extension_has_an_importable_loader():
    assert len(SUPPORTED_EXTENSIONS) == len(set(SUPPORTED_EXTENSIONS))
    for ext in SUPPORTED_EXTENSIONS:
        assert ext.startswith(".") and ext == ext.lower()
        assert callable(BY_EXTENSION[ext].loader())


def test_readme_lists_exactly_the_registry_types():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- file-types:begin -->\n(.*?)\n<!-- file-types:end -->", readme, flags=re.S)
    assert block, "README.md lost its file-types block"
    assert block.group(1) == markdown_table(), "regenerate it: python -m rag.loaders.registry"


def test_upload_label_names_every_extension():
    label = upload_label()
    assert all(ext in label for ext in SUPPORTED_EXTENSIONS)


def test_cli_folder_walk_takes_the_registry_types(tmp_path):
    from rag.cli import collect_files

    for t in FILE_TYPES:
        (tmp_path / f"a{t.extensions[-1]}").write_bytes(b"x")
    (tmp_path / "b.exe").write_bytes(b"x")
    (tmp_path / "c.doc").write_bytes(b"x")
    files, refused = collect_files([tmp_path])
    assert sorted(f.suffix for f in files) == sorted(t.extensions[-1] for t in FILE_TYPES)
    assert not refused


@pytest.mark.parametrize("name", ["old.doc", "old.ppt", "program.exe", "noextension"])
def test_an_extension_outside_the_table_is_refused_listing_the_table(tmp_path, name):
    path = tmp_path / name
    path.write_text("some text", encoding="utf-8")
    with pytest.raises(DocumentLoadError, match=rf"^{re.escape(name)}: unsupported") as info:
        load_file(path)
    assert all(ext in str(info.value) for ext in SUPPORTED_EXTENSIONS)
