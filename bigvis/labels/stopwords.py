"""Short stop-word lists per language (function words only), and the field -> language rule.

Kept deliberately small: a stop word only stops a label from being a unigram or
from starting or ending a phrase ("tears of joy" stays). Case-folded forms.
"""

from __future__ import annotations

import re

STOP_WORDS = {
    "en": "a an the and or but of to in on at by for with from as is are was were be been it its "
          "this that these those into over under up down out off about than then so no not very "
          "can will just my your our their his her he she they we you i me",
    "de": "der die das den dem des ein eine einer eines einem einen und oder aber von zu im in am "
          "an auf mit für aus bei nach über unter ist sind war wie als auch nicht kein keine es "
          "sie er wir ich du zum zur vom",
    "fr": "le la les l un une des du de d et ou mais à au aux en dans sur sous avec pour par "
          "est sont ce cet cette ces qui que il elle ils elles on ne pas se sa son ses",
    "es": "el la los las lo un una unos unas y o pero de del a al en con por para sin sobre es "
          "son que se su sus como más no le les",
    "it": "il lo la i gli le un uno una e o ma di del della dei delle a al alla da dal in nel "
          "nella con su per che è sono si non come l",
    "pt": "o a os as um uma uns umas e ou mas de do da dos das em no na nos nas com por para "
          "que se é são não ao à como",
    "nl": "de het een en of maar van in op aan met voor door bij uit tot als is zijn was niet "
          "dat die dit er te om",
    "ru": "и в во на с со к по за из у о об от до для не что это как а но или же бы",
    "sv": "och i på en ett att det som är av för med till den de om inte",
}
STOP_WORDS = {lang: frozenset(words.split()) for lang, words in STOP_WORDS.items()}

# Codes a field suffix may name (`keywords_de`); languages without a list simply stop nothing.
LANGS = frozenset(STOP_WORDS) | frozenset(
    "ja zh ko th ar he hi fa tr pl cs sk hu ro bg uk el da no nb fi et lv lt id ms vi".split())
_SUFFIX = re.compile(r"_([a-z]{2,3})(?:[-_][a-z]{2,4})?$")


def field_langs(source: str, default: tuple[str, ...]) -> tuple[str, ...]:
  """`keywords_de` -> ('de',); `keywords_zh_hant` -> ('zh',); `title` -> default."""
  m = _SUFFIX.search(source.lower())
  return (m[1],) if m and m[1] in LANGS else default


def stop_set(langs: tuple[str, ...]) -> frozenset[str]:
  if len(langs) == 1:
    return STOP_WORDS.get(langs[0], frozenset())
  return frozenset().union(*(STOP_WORDS.get(l, frozenset()) for l in langs))
