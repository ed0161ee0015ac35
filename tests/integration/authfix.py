"""crypt(3) hashes for test users files, made with the system's libcrypt (the same library
connectd verifies with), and Proxy-Authorization values."""

import base64
import ctypes

_lib = ctypes.CDLL("libcrypt.so.1")
_lib.crypt_gensalt.restype = ctypes.c_char_p
_lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
_lib.crypt.restype = ctypes.c_char_p
_lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]


def make_hash(password, prefix="$y$", cost=0):
    """prefix: "$y$" (yescrypt), "$6$" (sha512-crypt), "$2b$" (bcrypt); cost 0 = default."""
    setting = _lib.crypt_gensalt(prefix.encode(), cost, None, 0)
    assert setting, f"crypt_gensalt({prefix}, {cost}) failed"
    h = _lib.crypt(password.encode(), setting)
    assert h and not h.startswith(b"*"), f"crypt failed for {prefix}"
    return h.decode()


def basic(user, password):
    """The header line for these credentials."""
    tok = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {tok}\r\n".encode()


def write_users(path, users):
    """users: {name: hash}"""
    with open(path, "w") as f:
        f.write("# test users\n")
        for name, h in users.items():
            f.write(f"{name}:{h}\n")
    return str(path)
