"""``ofa-data cider-df``: document frequencies of a caption split for the SCST reward
(data_utils/cider_df.py)."""
import pytest

from ofa.data_utils.cider_df import references_by_image
from ofa.data_utils.cli import main
from ofa.data_utils.errors import DataError
from ofa.metrics.cider import build_document_frequency, load_document_frequency, normalize_for_reward

STAGE1 = ("0\t7\tA red circle.\tred circle\tIMG\n1\t7\ta circle, red\tred circle\tIMG\n"
          "2\t9\ta blue star\tblue star\tIMG\n")
STAGE2 = "7\t7\tA red circle.&&a circle, red\tred circle\tIMG\n9\t9\ta blue star\tblue star\tIMG\n"


def test_one_document_per_image_from_either_caption_layout(tmp_path):
    (tmp_path / "s1.tsv").write_text(STAGE1)
    (tmp_path / "s2.tsv").write_text(STAGE2)
    want = {"7": ["A red circle.", "a circle, red"], "9": ["a blue star"]}
    assert references_by_image([tmp_path / "s1.tsv"]) == want == references_by_image([tmp_path / "s2.tsv"])


def test_the_pickle_holds_the_frequencies_the_reward_would_build(tmp_path, capsys):
    (tmp_path / "s1.tsv").write_text(STAGE1)
    out = tmp_path / "df" / "train-words.p"
    assert main(["cider-df", str(tmp_path / "s1.tsv"), "--out", str(out)]) == 0
    assert "2 images, 3 references" in capsys.readouterr().out
    df, ref_len = load_document_frequency(out)
    want, want_len = build_document_frequency(
        [[normalize_for_reward(r) for r in ["A red circle.", "a circle, red"]], [normalize_for_reward("a blue star")]])
    assert (df, ref_len) == (want, want_len) and ref_len == 2.0
    assert df[("circle",)] == 1.0 and df[("a",)] == 2.0 and df[("<eos>",)] == 2.0  # per image, not per caption
    assert [p.name for p in out.parent.iterdir()] == ["train-words.p"]  # no temporary file left


def test_a_short_row_is_named_and_nothing_is_written(tmp_path):
    (tmp_path / "bad.tsv").write_text(STAGE1 + "3\t9\n")
    out = tmp_path / "words.p"
    with pytest.raises(DataError, match=r"bad.tsv, line 4, field 'columns'"):
        references_by_image([tmp_path / "bad.tsv"])
    assert main(["cider-df", str(tmp_path / "bad.tsv"), "--out", str(out)]) == 2
    assert not out.exists()
