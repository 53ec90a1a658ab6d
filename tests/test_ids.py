from chatserver.ids import IdKind, is_valid_id, new_id


def test_ids_made_later_sort_after_earlier_ones() -> None:
    ids = [new_id(IdKind.ITEM) for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_carry_their_kind_and_validate_only_as_that_kind() -> None:
    thread_id = new_id(IdKind.THREAD)
    assert thread_id.startswith("thr_")
    assert is_valid_id(IdKind.THREAD, thread_id)
    assert not is_valid_id(IdKind.ITEM, thread_id)
    assert not is_valid_id(IdKind.THREAD, thread_id + "\n")
    assert not is_valid_id(IdKind.THREAD, thread_id.upper())
