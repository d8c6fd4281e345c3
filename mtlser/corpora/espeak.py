"""A minimal binding to libespeak-ng (from the ``espeakng-loader`` wheel).

The mini corpus is synthesised with espeak-ng, driven through its C API with
ctypes, so that no system package or root access is needed. Prosody comes in
as SSML (``<prosody pitch= range= rate= volume=>``), which espeak-ng honours.
Output is 16-bit mono at espeak's native 22,050 Hz.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from mtlser.utils import MtlserError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_SSML = 0x10
# espeak_PARAMETER
RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """One process-wide espeak-ng engine (the C library keeps global state)."""

    _instance: "Espeak | None" = None
    _lock = threading.Lock()

    def __new__(cls) -> "Espeak":
        with cls._lock:
            if cls._instance is None:
                inst = super().__new__(cls)
                inst._init()
                cls._instance = inst
            return cls._instance

    def _init(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise MtlserError("espeakng-loader is not installed; run tools/install.sh") from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        # Voices with breath noise (en+f2, f3, f5) draw random numbers; espeak-ng's own generator,
        # seeded per utterance, makes them reproducible whatever else in the process calls rand().
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise MtlserError(f"espeak-ng failed to initialise (returned {rate})")
        self.sample_rate = rate
        self._lib = lib
        self._chunks: list[np.ndarray] = []

        def on_audio(wav, n, events):  # noqa: ARG001
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(on_audio)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)

    def synth(self, text: str, voice: str = "en", pitch: int = 50, range_: int = 50, rate: int = 175,
              ssml: bool = True, seed: int = 0) -> np.ndarray:
        """Synthesise ``text`` (SSML when ``ssml``); returns int16 samples at :attr:`sample_rate`.

        ``pitch`` and ``range_`` are espeak's 0-100 base values, ``rate`` words per minute;
        SSML prosody in the text applies on top of them. ``seed`` seeds espeak-ng's noise
        generator (breathy voices). espeak-ng also keeps state from one utterance to the next,
        so the same sequence of calls gives the same audio, not each call on its own.
        """
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise MtlserError(f"espeak-ng has no voice '{voice}'")
            for param, value in ((PITCH, pitch), (RANGE, range_), (RATE, rate)):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._chunks = []
            self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            data = text.encode("utf-8")
            flags = _CHARS_UTF8 | (_SSML if ssml else 0)
            err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None)
            if err != 0:
                raise MtlserError(f"espeak-ng failed on {text!r} (error {err})")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks)
