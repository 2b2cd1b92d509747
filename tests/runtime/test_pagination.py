"""The page size rule every List RPC applies."""

import pytest

from runtime.errors import ApiError
from runtime.pagination import page_size


def test_zero_is_the_default_and_the_bounds_pass():
    assert page_size(0) == 20
    assert page_size(1) == 1
    assert page_size(100) == 100


@pytest.mark.parametrize("bad", [-1, 101])
def test_outside_the_bounds_is_invalid_page_size(bad):
    with pytest.raises(ApiError) as caught:
        page_size(bad)
    assert (caught.value.reason, caught.value.param) == ("INVALID_PARAMETER", "page_size")
