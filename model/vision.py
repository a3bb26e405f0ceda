"""What the images are: the visual angle they span, and the categories the suite knows.

Shared by the virtual subject (which renders and masks these categories),
the map checks (centres of mass in degrees) and the selectivity analyses
(labels and masks); one home, so none of them reaches into another for a
constant.
"""
from __future__ import annotations

#: Degrees of visual angle the side of an image spans, as the NSD images did.
FIELD_OF_VIEW_DEG = 8.4

#: Category names in the order of their bit in a saved mask (bit i = 1 << i), and of every
#: (..., category, y, x) mask array.
CATEGORIES: tuple[str, ...] = ("face", "body", "word", "object", "place")
#: The categories that are objects painted into a scene (a place is the scene's layout).
OBJECT_CATEGORIES: tuple[str, ...] = ("face", "body", "word", "object")
#: Block-scrambled images of the localizer: nothing of any category is visible.
SCRAMBLED = "scrambled"
#: The fLoc localizer's categories in fLoc order ("word" stands for fLoc's characters).
LOCALIZER_CATEGORIES: tuple[str, ...] = ("face", "body", "place", "word", "object", SCRAMBLED)
