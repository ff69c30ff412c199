"""The one parser of image-code text (``ofa.data_utils.codes``), shared by the image_gen dataset, ``ofa-data
validate`` and ``ofa-vqgan decode``."""
import pytest

from ofa.data_utils.codes import CodeError, code_grid, parse_codes


def test_integers_and_code_tokens_parse_to_the_same_codes():
    assert parse_codes("12 7 8191") == [12, 7, 8191]
    assert parse_codes("<code_12>  <code_7>\t<code_8191>") == [12, 7, 8191]
    assert parse_codes("<code_3> 4") == [3, 4]
    assert parse_codes("   ") == []


@pytest.mark.parametrize("text", ["1 -2", "1 2.0", "<code_x>", "<code_1", "code_1>", "<bin_3>"])
def test_a_malformed_token_is_named(text):
    with pytest.raises(CodeError) as e:
        parse_codes(text)
    assert repr(text.split()[-1]) in str(e.value)


def test_count_and_codebook_range_are_checked_when_given():
    assert parse_codes("0 1 2 3", expected=4, vocab_size=4) == [0, 1, 2, 3]
    with pytest.raises(CodeError, match="3 image codes, expected 4"):
        parse_codes("0 1 2", expected=4)
    with pytest.raises(CodeError, match=r"must lie in \[0, 4\), got \[0, 4\]"):
        parse_codes("0 4", vocab_size=4)


def test_code_grid_is_square_unless_a_grid_is_given():
    assert code_grid(64) == (8, 8)
    assert code_grid(32, (4, 8)) == (4, 8)
    for count, grid in [(63, None), (0, None), (64, (4, 8))]:
        with pytest.raises(CodeError, match="do not fill"):
            code_grid(count, grid)
