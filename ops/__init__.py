"""Operations tooling: the backup, restore and read scale-out drill (``make drill``)."""
