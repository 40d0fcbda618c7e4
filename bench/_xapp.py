"""An X11 application for the desktop benchmark (``bench.apps_wan``): what a user
does on a remote desktop, in a form a benchmark can drive and check.

    DISPLAY=:N python -m bench._xapp

Commands on stdin, one per line (each answered with one JSON line on stdout):

- ``drag``: a 480x320 window moves across the screen at 60 moves per second, as
  a window dragged with the mouse (the X server moves it: VNC servers send that as
  CopyRect plus the uncovered background);
- ``video``: a 640x360 area redraws 30 times per second with moving shapes and
  colours (detail a video would have, JPEG-friendly but never the same twice);
- ``still``: no animation;
- ``stats``: ``{"updates": N, "seconds": S}`` since the last mode change (how many
  screen changes the app made: the most frames any viewer could show);
- ``quit``.

A key press anywhere makes the 200x200 square at (KEY_X, KEY_Y) change colour,
blue and green in turn (the answer tells which colour it shows now): the input
latency probe looks for that colour under the square's centre.
"""

import json
import math
import sys
import time

KEY_X, KEY_Y, KEY_SIZE = 40, 40, 200
COLOURS = ("#0000ff", "#00ff00")


def main():
    import tkinter as tk

    root = tk.Tk()
    width, height = root.winfo_screenwidth(), root.winfo_screenheight()
    root.geometry(f"{width}x{height}+0+0")
    root.configure(background="#404040")
    root.overrideredirect(True)
    key = tk.Frame(root, width=KEY_SIZE, height=KEY_SIZE, background=COLOURS[0])
    key.place(x=KEY_X, y=KEY_Y)
    state = {"mode": "still", "updates": 0, "t0": time.monotonic(), "key": 0, "job": None,
             "step": 0}

    # the dragged window: a toplevel with some text and stripes
    win = tk.Toplevel(root)
    win.overrideredirect(True)
    win.geometry("480x320+300+200")
    canvas = tk.Canvas(win, width=480, height=320, background="#f0f0e0", highlightthickness=0)
    canvas.pack()
    for i in range(0, 320, 20):
        canvas.create_rectangle(0, i, 480, i + 10, fill="#d0d8f0", outline="")
    for i in range(12):
        canvas.create_text(20, 20 + i * 24, anchor="w", font=("Helvetica", 14),
                           text=f"Line {i}: the quick brown fox jumps over the lazy dog")
    win.withdraw()

    # the video: moving shapes on a changing background
    video = tk.Canvas(root, width=640, height=360, background="#000000", highlightthickness=0)
    shapes = []
    for i in range(40):
        colour = "#%02x%02x%02x" % ((i * 53) % 256, (i * 97) % 256, (i * 151) % 256)
        shapes.append(video.create_oval(0, 0, 60, 60, fill=colour, outline=""))
    label = video.create_text(320, 340, fill="#ffffff", font=("Helvetica", 18), text="")

    def tick():
        state["job"] = None
        state["step"] += 1
        n = state["step"]
        if state["mode"] == "drag":
            x = 300 + int(300 * math.cos(n / 30))
            y = 200 + int(150 * math.sin(n / 30))
            win.geometry(f"+{x}+{y}")
            state["job"] = root.after(16, tick)
        elif state["mode"] == "video":
            video.configure(background="#%02x%02x%02x" % (n % 64, (n * 3) % 64, (n * 7) % 64))
            for i, shape in enumerate(shapes):
                x = 290 + 260 * math.sin(n / 20 + i)
                y = 150 + 130 * math.cos(n / 13 + i * 1.7)
                video.coords(shape, x, y, x + 30 + i, y + 30 + i)
            video.itemconfigure(label, text=f"frame {n}")
            state["job"] = root.after(33, tick)
        else:
            return
        state["updates"] += 1

    def set_mode(mode):
        if state["job"] is not None:
            root.after_cancel(state["job"])
            state["job"] = None
        state.update(mode=mode, updates=0, t0=time.monotonic())
        win.withdraw()
        video.place_forget()
        if mode == "drag":
            win.deiconify()
            win.lift()   # above the full-screen root window, or its moves show nothing
        elif mode == "video":
            video.place(x=560, y=300)
        root.update_idletasks()
        if mode != "still":
            tick()

    def on_key(_event):
        state["key"] ^= 1
        key.configure(background=COLOURS[state["key"]])

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def command(*_):
        line = sys.stdin.readline()
        cmd = line.strip()
        if not line or cmd == "quit":
            root.destroy()
            return
        if cmd in ("drag", "video", "still"):
            set_mode(cmd)
            reply({"mode": cmd, "key": COLOURS[state["key"]]})
        elif cmd == "stats":
            reply({"updates": state["updates"], "seconds": time.monotonic() - state["t0"],
                   "key": COLOURS[state["key"]]})
        else:
            reply({"error": f"unknown command {cmd!r}"})

    root.bind_all("<KeyPress>", on_key)
    root.tk.createfilehandler(sys.stdin, tk.READABLE, command)
    root.after(100, lambda: (root.focus_force(), reply({"ready": True, "width": width,
                                                         "height": height})))
    root.mainloop()


if __name__ == "__main__":
    main()
