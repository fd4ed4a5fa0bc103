"""A researcher's own folder through `heavy corpus add`: what each kind of file becomes, and what the add says."""

from heavy.corpus.commands import corpus_add
from heavy.corpus.documents import read_documents
from heavy.corpus.index import CorpusIndex


def test_a_markdown_files_front_matter_names_it_and_its_fields_stay_searchable(tmp_path):
    # the first line named a Markdown document: every file with front matter was titled "---", and so were the
    # search hits and the report's sources citing it
    root = tmp_path / "notes"
    root.mkdir()
    (root / "meeting.md").write_text(
        "---\ntitle: \"Lab meeting, 3 November\"\nauthor: R. Okafor\ndate: 2026-11-03\n---\n\n"
        "# Calibration drift\n\nThe Raman spectrometer drifted by 4.2 wavenumbers.\n")
    (root / "untitled.md").write_text("---\r\ntags: [xrd]\r\n---\r\n# XRD booking\r\n\r\nSix hours a day at most.\r\n")
    (root / "rule.md").write_text("# Horizontal rules\n\n---\n\ntitle: not front matter\n")
    docs = {d.title: d.text for d in read_documents(root)}
    assert docs == {
        "Lab meeting, 3 November": "author: R. Okafor\ndate: 2026-11-03\n\n# Calibration drift\n\n"
                                   "The Raman spectrometer drifted by 4.2 wavenumbers.",
        "XRD booking": "tags: [xrd]\n\n# XRD booking\n\nSix hours a day at most.",
        "Horizontal rules": "# Horizontal rules\n\n---\n\ntitle: not front matter",
    }
    corpus_add(root, tmp_path / "index.sqlite")
    index = CorpusIndex(tmp_path / "index.sqlite")
    assert [hit.title for hit in index.search("Okafor Raman", k=3)] == ["Lab meeting, 3 November"]
