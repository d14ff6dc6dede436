"""Danga::Socket's class-method names, acting on the default loop (``danga.get_loop()``).

:class:`danga.Socket` inherits them, so a Perl program ports line by line:
``Danga::Socket->EventLoop`` becomes ``danga.Socket.EventLoop()``. Each is a thin call
of the Python-style method of the default loop (docs/porting.md has the table).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .loop import debug_msg, get_loop

if TYPE_CHECKING:
    from ._registry import OtherFds
    from .loop import PostLoopCallback
    from .socket import Socket
    from .timers import Timer

__all__ = ["DangaNames"]


class _ClassOrInstanceMethod:
    """A method that acts on the class when called on the class and on the object when
    called on one (Danga's SetPostLoopCallback: global on the class, per-object on an
    object). It keeps the function's name, signature and docstring for the docs."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.__func__ = func
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__
        self.__wrapped__ = func

    def __get__(self, obj: Any, objtype: Any = None) -> Callable[..., Any]:
        return types.MethodType(self.__func__, objtype if obj is None else obj)


class DangaNames:
    """Danga's CamelCase class methods (a mixin of :class:`danga.Socket`)."""

    __slots__ = ()

    @classmethod
    def EventLoop(cls) -> None:
        """Run the default loop (``get_loop().run()``)."""
        get_loop().run()

    @classmethod
    def AddTimer(cls, seconds: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """``get_loop().add_timer(seconds, callback, *args)``."""
        return get_loop().add_timer(seconds, callback, *args)

    @classmethod
    def Reset(cls) -> None:
        """``get_loop().reset()``."""
        get_loop().reset()

    @classmethod
    def HaveEpoll(cls) -> bool:
        """True exactly when the default loop's backend is epoll."""
        return get_loop().have_epoll()

    @classmethod
    def WatchedSockets(cls) -> int:
        """``get_loop().watched_sockets()``."""
        return get_loop().watched_sockets()

    @classmethod
    def DescriptorMap(cls) -> dict[int, Socket]:
        """The default loop's live descriptor map."""
        return get_loop().descriptor_map

    @classmethod
    def ToClose(cls) -> list[Socket]:
        """``get_loop().to_close()``."""
        return get_loop().to_close()

    @classmethod
    def OtherFds(cls, mapping: dict[int, Callable[[int], Any]] | None = None) -> OtherFds:
        """Replace the default loop's other fds with *mapping* (if given); returns the
        live map."""
        loop = get_loop()
        if mapping is not None:
            loop.set_other_fds(mapping)
        return loop.other_fds

    @classmethod
    def AddOtherFds(cls, mapping: dict[int, Callable[[int], Any]]) -> None:
        """``get_loop().add_other_fds(mapping)``."""
        get_loop().add_other_fds(mapping)

    @classmethod
    def SetLoopTimeout(cls, ms: float) -> float:
        """``get_loop().set_loop_timeout(ms)``."""
        return get_loop().set_loop_timeout(ms)

    @classmethod
    def EnableProfiling(cls) -> bool:
        """``get_loop().enable_profiling()``."""
        return get_loop().enable_profiling()

    @classmethod
    def DisableProfiling(cls) -> None:
        """``get_loop().disable_profiling()``."""
        get_loop().disable_profiling()

    @classmethod
    def ProfilingData(cls) -> dict[str, list[float]]:
        """``get_loop().profiling_data()``."""
        return get_loop().profiling_data()

    @classmethod
    def DebugMsg(cls, fmt: str, *args: Any) -> None:
        """Danga's DebugMsg: ``>>> message`` on stderr."""
        debug_msg(fmt, *args)

    @_ClassOrInstanceMethod
    def SetPostLoopCallback(self_or_cls: Any, callback: PostLoopCallback | None) -> None:
        """On the class: the default loop's global post-loop callback
        (``get_loop().set_post_loop_callback(callback)``). On an object: that object's
        own post-loop callback (as in Perl). None removes it.

        Raises:
            TypeError: *callback* is neither callable nor None.
        """
        if isinstance(self_or_cls, type):
            get_loop().set_post_loop_callback(callback)
        else:
            self_or_cls.set_post_loop_callback(callback)
