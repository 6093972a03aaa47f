"""The built-in question families: what one clip (or image) shows, the question asked about it, its
answer and its reasoning. synthetic.py assembles them into the dataset's splits and files.

Question families (`data_source` names the family):

- `synthetic/temporal/direction` (MC): does the shape move left or right?
- `synthetic/temporal/appear_first` (MC): which of two shapes appears first?
- `synthetic/temporal/size_change` (MC): does the shape get bigger or smaller?
- `synthetic/temporal/count_before` (numerical): how many times does a small square flash before a
  circle appears?
- `synthetic/static/color`, `synthetic/static/shape` (MC), `synthetic/static/count` (numerical):
  controls answerable from any single frame; the only families used for still images.

`scene(..., cue=...)` draws size change's and direction's shape colour from a palette tied to the
answer (CUES): the static shortcut of shortcut.py's benchmark. The built-in dataset never sets it.

Why the temporal answers depend on order: every temporal family is closed under time reversal with
the same probability for a clip and its reverse, and reversing a clip flips (or changes) its answer
while keeping the multiset of frames. So the unordered set of frames carries no information about
the answer beyond chance; shuffling the frames (T-GRPO's G̃ group, notes §1 step 4) destroys it.
Each family's docstring gives the argument for that family. Videos are ~50/50 temporal vs static;
answers are balanced across values.

Reasoning (VERSION 3): the COT split's `process` starts with the right answer's own words, then
checks them frame by frame ("<think>bigger. Let me think. In the first frame ... It gets bigger over
time. The answer is A.</think>"); the perception split (`train_perception.json`: clips of its own
random stream, the same questions; stage 0 of the built-in recipe, coldstart.py, D8) has only the
words ("<think>bigger</think>", "<think>the red circle</think>", "<think>3</think>"). Measured on
200 held-out clips (tiny model, frozen tower): with the answer's words first the decoder learns to
read the features (after 720 perception steps of 8: colour stated 1.00, size change 0.74 ordered /
0.52 shuffled); with a full sentence first ("It gets bigger over time.") or with the chain of
thought alone (VERSION 2's, words last) every family stays at chance; and a COT stage whose
reasoning does not start with the words undoes most of the perception stage (colour stated 0.84 but
answered 0.24, size change 0.52), one that does keeps more (colour 0.98 / 0.60, appear-first 0.70 /
0.52 on ordered / shuffled frames).

Rendering for the tiny resolution (VERSION 3): the tiny presets feed 84x84 frames, 6x6 patches of
14 px merged into 3x3 tokens of 28 px, two frames per temporal patch. So shapes are larger than a
patch (one static shape 0.15-0.22 of the side in half-size, moving ones 0.10-0.16), a moving shape
travels 0.5-0.65 of the side (it crosses at least two merged tokens), the background is one constant
grey (BACKGROUND: clip-to-clip variation was the largest feature variation), and appear_first's two
entries (and two exits) fall in different temporal patches. With these the frozen features' linear
probe (bench/vision_probe.py) reads colour 0.99 (was 0.82), direction 0.90 (0.78), shape 0.62
(0.49), size change 1.00 (1.00).

Option order: each family lists its options in one fixed order (colours in COLORS order, shapes in
SHAPES order, "bigger" before "smaller", "left" before "right"; `_option_rank`), as some benchmarks
do, not in a random order. Measured reason (VERSION 1 shuffled them): after SFT the tiny model's
reasoning named the right answer to size_change questions in 78 % of held-out clips with ordered
frames (50 % shuffled), but the letter it then gave matched its own reasoning only 41 % of the time.
Binding a word to a letter that moves between questions is a skill the from-scratch decoder does not
learn within the CPU budget, and it hid what the model sees (measured with the first evidence
protocol's "seeing vs answering" table, now bench/seeing.py's). With a fixed order a constant letter
still scores chance in expectation: the correct option's place follows its value, and the values are
balanced.
Colour lists all six colours (VERSION 4): with the right colour and three random others (VERSION 3)
the letter of "red" moved with the distractors, and a tiny model that named the colour for 0.97 of
held-out clips chose its letter for 0.58. Now each colour has one letter, as each shape, size change
and direction already had.
"""

from __future__ import annotations

import numpy as np

# bump when the rendering or the questions change: a new version re-renders the data (synthetic.py)
VERSION = 4
COLORS = {"red": (220, 50, 50), "green": (50, 180, 70), "blue": (50, 100, 240),
          "yellow": (240, 220, 50), "purple": (160, 70, 210), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")
TEMPORAL_FAMILIES = ("direction", "appear_first", "size_change", "count_before")
STATIC_FAMILIES = ("color", "shape", "count")
LETTERS = "ABCDEFGH"
# The static shortcut of shortcut.py's benchmark: in these order-dependent families the moving
# shape's colour can predict the answer (warm colours with one answer, cool ones with the other).
WARM, COOL = ("red", "orange", "yellow"), ("green", "blue", "purple")
CUES = {"size_change": {"bigger": WARM, "smaller": COOL},
        "direction": {"right": WARM, "left": COOL}}
# grey level of every frame: one constant, so the vision features vary with the shapes only
BACKGROUND = 28
# count_before: P(m flashes after the marker | k flashes before it). With k uniform on {0,1,2} this
# makes the joint P(k, m) symmetric (P(k,m) = P(m,k)), so a clip and its reverse are equally likely.
_M_GIVEN_K = {0: ((1, 2), (1 / 3, 2 / 3)),
              1: ((0, 1, 2), (1 / 3, 1 / 3, 1 / 3)),
              2: ((0, 1), (2 / 3, 1 / 3))}


def render_frame(objects: list[tuple], size: int, background: int) -> np.ndarray:
    """Draw flat shapes on a plain grey background.

    Args: objects: (shape, color_name, cx, cy, r) tuples, centre and half-size r in pixels (float),
    drawn in order (later on top); shape in SHAPES, color_name in COLORS. size: frame side in
    pixels. background: grey level 0-255. Returns (size, size, 3) uint8 RGB. Raises KeyError for an
    unknown colour and ValueError for an unknown shape.
    """
    img = np.full((size, size, 3), background, dtype=np.uint8)  # (H, W, 3)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # (H, W) pixel centres
    for shape, color, cx, cy, r in objects:
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif shape == "square":
            mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        elif shape == "triangle":  # apex up, base 2r wide at cy + r
            top = cy - r
            mask = (yy >= top) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - top) / 2)
        else:
            raise ValueError(f"scenes.render_frame: unknown shape {shape!r}")
        img[mask] = COLORS[color]
    return img



def _option_rank(text: str) -> tuple:
    """Where an option text sits in its family's fixed option order: colours in COLORS order, shapes
    in SHAPES order, "the <colour> <shape>" by colour then shape, other words alphabetically
    (bigger/smaller, left/right)."""
    words = text.split()
    if text in COLORS:
        return (list(COLORS).index(text),)
    if text in SHAPES:
        return (SHAPES.index(text),)
    if len(words) == 3 and words[0] == "the":
        return (list(COLORS).index(words[1]), SHAPES.index(words[2]))
    return (text,)


def _mc(correct: str, others: list[str]) -> tuple[list[str], str]:
    """Options "A. ..." of `correct` and `others` in the family's fixed order (_option_rank);
    returns (options, letter of `correct`). A fixed order, not a random one: see the module
    docstring ("Option order")."""
    texts = sorted([correct, *others], key=_option_rank)
    letter = texts.index(correct)
    return [f"{LETTERS[i]}. {t}" for i, t in enumerate(texts)], LETTERS[letter]


def _place(rng, size: int, radii: list[float], lo: float = 0.0,
           hi: float = 0.0) -> list[tuple[float, float]]:
    """Non-overlapping centres for shapes of half-size `radii`, kept `lo`/`hi` px further from the
    edges."""
    for _ in range(2000):
        pts = [(rng.uniform(r + 2 + lo, size - r - 2 - hi),
                rng.uniform(r + 2 + lo, size - r - 2 - hi)) for r in radii]
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) > 1.45 * (ra + rb) + 3
               for i, (p, ra) in enumerate(zip(pts, radii)) for q, rb in zip(pts[:i], radii[:i])):
            return pts
    raise RuntimeError(f"synthetic: cannot place {len(radii)} shapes in a {size}px frame")


def _pick(rng, options, k: int, exclude=()) -> list:
    """k distinct random items of `options` not in `exclude`."""
    pool = [o for o in options if o not in exclude]
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def _cap(text: str) -> str:
    """Upper-case the first character only."""
    return text[:1].upper() + text[1:]


def _colors(rng, family: str, answer, cue: str | None) -> tuple[str, str]:
    """(the moving shape's colour, the distractor's), distinct. cue None: two random colours, drawn
    as the built-in dataset always has; "free": the shape's from all colours; "follow" / "reverse":
    from the answer's / the other answer's CUES palette. Raises KeyError for a family without a cue,
    ValueError for a bad cue."""
    if cue is None:
        return tuple(_pick(rng, COLORS, 2))
    if cue not in ("follow", "reverse", "free"):
        raise ValueError(f"scenes: cue must be None, 'free', 'follow' or 'reverse', got {cue!r}")
    palettes = CUES[family]
    key = answer if cue == "follow" else next(a for a in palettes if a != answer)
    color = _pick(rng, COLORS if cue == "free" else palettes[key], 1)[0]
    return color, _pick(rng, COLORS, 1, exclude=[color])[0]


def _direction(rng, T, size, answer, cue=None):
    """Does the shape move left or right (MC)? Shuffling destroys the answer: a left-moving clip
    played backwards is an equally likely right-moving clip over exactly the same frames (same set
    of positions), so only the order of the frames tells the two apart. An optional static
    distractor sits off the path. cue: the moving shape's colour as a static shortcut (_colors; None
    draws as before)."""
    color, dcolor = _colors(rng, "direction", answer, cue)
    shape, dshape = _pick(rng, SHAPES, 2)
    # crosses >= 2 merged tokens (28 px)
    r, travel = size * rng.uniform(0.10, 0.13), size * rng.uniform(0.5, 0.65)
    x0 = rng.uniform(r + 2, size - r - 2 - travel)
    xs = np.linspace(x0, x0 + travel, T)[:: 1 if answer == "right" else -1]  # (T,) pixels
    y = rng.uniform(r + 2, size - r - 2)
    distractor = []
    if rng.random() < 0.5:
        rd = size * 0.07
        ys = [v for v in np.linspace(rd + 2, size - rd - 2, 50) if abs(v - y) > 1.45 * (r + rd) + 3]
        if ys:
            distractor = [(dshape, dcolor, rng.uniform(rd + 2, size - rd - 2),
                           float(rng.choice(ys)), rd)]
    frames = [distractor + [(shape, color, float(x), y, r)] for x in xs]
    options, sol = _mc(answer, ["left" if answer == "right" else "right"])
    mid = xs[T // 2]
    process = (f"Let me think. In the first frame the {color} {shape} is about {xs[0]:.0f} pixels "
               f"from the left edge; in frame {T // 2 + 1} it is at about {mid:.0f} pixels; "
               f"in the last frame it is at about {xs[-1]:.0f} pixels. "
               "Its distance from the left edge keeps "
               f"{'growing' if answer == 'right' else 'shrinking'}, so it moves to the {answer}.")
    return frames, f"In which direction does the {color} {shape} move?", options, sol, process


def _appear_first(rng, T, size, answer):
    """Which of two shapes appears first (MC)? Shape X is visible on frames [s1, e1] and Y on
    [s2, e2] with s1 < s2 <= e1 < e2 (X in first and out first), drawn uniformly from all such
    tuples. Shuffling destroys the answer: time reversal maps this set onto itself with X and Y
    swapped (Y then appears first), and the reversed clip has the same multiset of frames (X only,
    both, Y only, empty), equally likely."""
    # The two entries (and the two exits) fall in different temporal patches (frames 2k, 2k+1 form
    # patch k; for an even T this set is still closed under time reversal): within one patch the
    # tiny model cannot order them.
    tuples = [(a, b, c, d) for a in range(T) for b in range(a + 1, T) for c in range(b, T)
              for d in range(c + 1, T) if a // 2 < b // 2 and c // 2 < d // 2]
    s1, s2, e1, e2 = tuples[rng.integers(len(tuples))]
    (c1, c2), (h1, h2) = _pick(rng, COLORS, 2), _pick(rng, SHAPES, 2)
    r = size * rng.uniform(0.12, 0.16)
    (p1, p2) = _place(rng, size, [r, r])
    first, second = (h1, c1, p1[0], p1[1], r), (h2, c2, p2[0], p2[1], r)
    frames = [[o for o, (s, e) in ((first, (s1, e1)), (second, (s2, e2))) if s <= t <= e]
              for t in range(T)]
    name1, name2 = f"the {c1} {h1}", f"the {c2} {h2}"
    options, sol = _mc(name1, [name2])
    empty = (f"Frames 1 to {s1} show no shape. " if s1 > 1
             else ("Frame 1 shows no shape. " if s1 == 1 else ""))
    process = (f"Let me go through the frames in order. {empty}{_cap(name1)} is first visible in "
               f"frame {s1 + 1}. {_cap(name2)} is first visible later, in frame {s2 + 1}. "
               f"So {name1} appears first.")
    return frames, "Which shape appears first?", options, sol, process


def _size_change(rng, T, size, answer, cue=None):
    """Does the shape get bigger or smaller (MC)? The half-size follows a geometric ramp between a
    small and a large value. Shuffling destroys the answer: the reversed clip is an equally likely
    clip of the other answer made of the very same frames; only their order says which way the size
    changes. cue: the shape's colour as a static shortcut (_colors; None draws as before)."""
    color, dcolor = _colors(rng, "size_change", answer, cue)
    shape, dshape = _pick(rng, SHAPES, 2)
    # (T,) pixels
    rs = np.geomspace(size * rng.uniform(0.04, 0.07), size * rng.uniform(0.15, 0.2), T)
    rs = rs[:: 1 if answer == "bigger" else -1]
    rd = size * 0.06
    (p, pd) = _place(rng, size, [rs.max(), rd])
    distractor = [(dshape, dcolor, pd[0], pd[1], rd)] if rng.random() < 0.5 else []
    frames = [distractor + [(shape, color, p[0], p[1], float(r))] for r in rs]
    options, sol = _mc(answer, ["smaller" if answer == "bigger" else "bigger"])
    process = (f"Let me think. In the first frame the {color} {shape} is about {2 * rs[0]:.0f} "
               f"pixels wide, in frame {T // 2 + 1} about {2 * rs[T // 2]:.0f} pixels, "
               f"and in the last frame about {2 * rs[-1]:.0f} pixels. It gets {answer} over time.")
    return frames, f"Does the {color} {shape} get bigger or smaller?", options, sol, process


def _count_before(rng, T, size, answer):
    """How many times does a small square flash (one frame each, never two in a row) before a circle
    appears (for one frame)? Numerical, answer k in {0, 1, 2}; m flashes follow the circle, with
    P(k, m) symmetric and the blank frames spread uniformly. Shuffling destroys the answer: the
    frames only tell the total k + m, and the reversed clip (same frames, answer m) is equally
    likely, so for every total several answers remain possible (1: {0,1}, 2: {0,1,2}, 3: {1,2})."""
    k = answer
    m = int(rng.choice(_M_GIVEN_K[k][0], p=_M_GIVEN_K[k][1]))
    tokens = ["F"] * k + ["M"] + ["F"] * m
    # blanks between tokens
    gaps = [1 if a == b == "F" else 0 for a, b in zip(tokens[:-1], tokens[1:])]
    extra = T - len(tokens) - sum(gaps)
    # stars and bars
    cuts = np.sort(rng.choice(extra + len(tokens), size=len(tokens), replace=False))
    # (len(tokens)+1,) sums to extra
    spread = np.diff(np.concatenate([[-1], cuts, [extra + len(tokens)]])) - 1
    seq = ["B"] * int(spread[0])
    for i, tok in enumerate(tokens):
        seq += [tok] + ["B"] * ((gaps[i] if i < len(gaps) else 0) + int(spread[i + 1]))
    cs, cm = _pick(rng, COLORS, 2)
    rs, rm = size * rng.uniform(0.08, 0.10), size * rng.uniform(0.12, 0.15)
    (ps, pm) = _place(rng, size, [rs, rm])
    square, circle = ("square", cs, ps[0], ps[1], rs), ("circle", cm, pm[0], pm[1], rm)
    frames = [[square] if s == "F" else [circle] if s == "M" else [] for s in seq]
    steps, n = [], 0
    for t, s in enumerate(seq[: seq.index("M") + 1]):
        if s == "F":
            n += 1
            steps.append(f"frame {t + 1}: the square flashes ({n})")
        elif s == "M":
            steps.append(f"frame {t + 1}: the {cm} circle appears")
    process = (f"Let me go through the frames in order and count the flashes of the {cs} square. "
               f"{_cap('; '.join(steps))}. So the square flashed {k} time{'s' * (k != 1)} "
               "before the circle appeared.")
    problem = f"How many times does the small {cs} square flash before the {cm} circle appears?"
    return frames, problem, [], str(k), process


def _moving(rng, T, size, radii):
    """Per-frame centres (T, n, 2) in pixels of non-overlapping shapes that, in half of the clips,
    all translate by one common vector (so they never collide) and otherwise stay still."""
    max_shift = 0.25 if len(radii) == 1 else 0.1
    # (2,) px
    d = rng.uniform(-max_shift, max_shift, size=2) * size * float(rng.random() < 0.5 and T > 1)
    half = float(np.abs(d).max()) / 2
    pts = np.array(_place(rng, size, radii, lo=half, hi=half))  # (n, 2) centres at mid-clip
    return pts[None] + (np.linspace(0, 1, T) - 0.5)[:, None, None] * d  # (T, n, 2)


def _static(rng, T, size, answer, family, medium):
    """Static controls, answerable from any single frame: colour or shape of the single (possibly
    moving) shape (MC), or the number of (possibly moving, never overlapping) shapes (numerical)."""
    n = answer if family == "count" else 1
    colors = [answer] if family == "color" else _pick(rng, COLORS, n)
    shapes = [answer] if family == "shape" else [SHAPES[i] for i in rng.integers(0, 3, size=n)]
    # one shape: several patches wide
    lo, hi = {1: (0.15, 0.22), 2: (0.10, 0.14)}.get(n, (0.08, 0.11))
    radii = [size * rng.uniform(lo, hi) for _ in range(n)]
    where = _moving(rng, T, size, radii)  # (T, n, 2)
    frames = [[(shapes[i], colors[i], float(where[t, i, 0]), float(where[t, i, 1]), radii[i])
               for i in range(n)]
              for t in range(T)]
    if family == "color":
        # all six: each colour has one letter
        options, sol = _mc(answer, [c for c in COLORS if c != answer])
        problem = f"What color is the shape in the {medium}?"
        process = f"Let me look. There is one {shapes[0]} in the {medium}, and it is {answer}."
    elif family == "shape":
        options, sol = _mc(answer, _pick(rng, SHAPES, 2, exclude=[answer]))
        looks = {"circle": "a round outline with no corners",
                 "square": "four equal sides and four right-angle corners",
                 "triangle": "three corners, with the tip pointing up"}[answer]
        problem = f"What shape is the {colors[0]} object?"
        process = f"Let me look. The {colors[0]} object has {looks}, so it is a {answer}."
    else:
        names = [f"{'an' if c == 'orange' else 'a'} {c} {s}" for c, s in zip(colors, shapes)]
        listed = names[0] if n == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        options, sol = [], str(n)
        problem = f"How many shapes are there in the {medium}?"
        process = f"Let me count. I can see {listed}. That makes {n} shape{'s' * (n > 1)}."
    return frames, problem, options, sol, process


def answers(family: str):
    """The values a family's answer is balanced over, and its number of MC options
    (0: numerical)."""
    return {"direction": (("left", "right"), 2), "appear_first": ((None,), 2),
            "size_change": (("bigger", "smaller"), 2), "count_before": ((0, 1, 2), 0),
            "color": (tuple(COLORS), len(COLORS)), "shape": (SHAPES, 3),
            "count": ((1, 2, 3, 4), 0)}[family]


def scene(family: str, rng, T: int, size: int, answer, medium: str, cue: str | None = None):
    """One sample of `family` with the given answer (a value of `answers(family)`): (frames,
    problem, options, solution, process). frames: T lists of (shape, colour, cx, cy, r) objects for
    render_frame, positions and half-sizes in pixels of a size x size frame; options: ["A. ...",
    ...] or [] (numerical); solution: a letter or a number as text; process: the reasoning without
    tags. rng: numpy Generator; medium: "video" or "image" (static families only). cue (families in
    CUES only): "follow" / "reverse" draws the shape's colour from the answer's / the other answer's
    palette, "free" from all colours (shortcut.py's benchmark); None: the built-in dataset's draw.
    Raises KeyError for an unknown family or a cue for a family without one."""
    temporal = {"direction": _direction, "appear_first": _appear_first, "size_change": _size_change,
                "count_before": _count_before}
    if cue is not None and family not in CUES:
        raise KeyError(f"scenes.scene: family {family!r} has no static cue (CUES: {sorted(CUES)})")
    if family in CUES:
        return temporal[family](rng, T, size, answer, cue)
    if family in temporal:
        return temporal[family](rng, T, size, answer)
    if family not in STATIC_FAMILIES:
        raise KeyError(f"scenes.scene: unknown family {family!r}")
    return _static(rng, T, size, answer, family, medium)


# The sentence of each family's reasoning (the COT `process`) that states the answer, as the model
# learns to write it.
_STATED = {"direction": r"moves to the (left|right)\b",
           "appear_first": r"So (the \w+ \w+) appears first",
           "size_change": r"gets (bigger|smaller) over time",
           "count_before": r"flashed (\d+) times? before",
           "color": r"and it is (\w+)\.",
           "shape": r"[Ss]o it is an? (\w+)\.",
           "count": r"That makes (\d+) shapes?"}


# The answer's own words, as the reasoning of both splits starts with them ("<think>bigger. ..." /
# "<think>bigger</think>").
_WORDS = {"direction": r"left|right", "appear_first": r"the \w+ \w+",
          "size_change": r"bigger|smaller", "count_before": r"\d+", "color": r"\w+",
          "shape": r"\w+", "count": r"\d+"}


def stated_answer(family: str, text: str) -> str | None:
    """The answer a completion's reasoning states, in the words of the built-in data (e.g. "bigger",
    "the red circle", "2"): the last sentence of the family's COT conclusion ("It gets bigger over
    time.") when there is one, else the words the reasoning starts with ("<think>bigger</think>",
    "<think>bigger. Let me ..."), else None. Separates seeing from answering: the option letter must
    also be matched to it. family: a name in TEMPORAL_FAMILIES or STATIC_FAMILIES (KeyError
    otherwise); text: the completion (its <think> part is read)."""
    import re
    think = text.split("</think>")[0]
    found = re.findall(_STATED[family], think)
    if found:
        return found[-1]
    lead = re.match(r"\s*<think>\s*([^.<]*?)\s*(?:\.|$)", think)
    return lead.group(1) if lead and re.fullmatch(_WORDS[family], lead.group(1)) else None
