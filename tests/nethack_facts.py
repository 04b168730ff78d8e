"""NetHack facts the tests check the package against, written out from NetHack's documentation, not from the package."""

# NetHack's vi-keys: the ASCII value of each CompassDirection (upper case: CompassDirectionLonger) is the key that
# moves that way, as (row, column) steps.
VI_KEY_MOVES = {
    "k": (-1, 0),
    "l": (0, 1),
    "j": (1, 0),
    "h": (0, -1),
    "u": (-1, 1),
    "n": (1, 1),
    "b": (1, -1),
    "y": (-1, -1),
}
