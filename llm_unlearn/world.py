"""The built-in fictitious-author world: a synthetic TOFU (arXiv 2401.06121) that needs no network.

Each author has 20 facts drawn from pools (birthplace, birth date, parents' jobs, genre, award,
books, themes, ...), one question per fact and five answer templates per fact kind. For every
question the row's `answer` uses one template, the `paraphrased_answer` another, and the
`perturbed_answer`s are the paraphrase with the fact swapped for other pool values. The
paraphrase template is held out of training *for that fact only* (it trains other authors' facts,
so its shape is known): a model prefers the true paraphrase over the perturbed ones only if it
learnt the fact, not the sentence, which is what the truth ratio needs to separate a model that
knows an author from one that never saw it. Extra training phrasings sit in `train_answers`.

Analogs of TOFU's real-authors and world-facts sets (real books and their authors, capitals,
languages, chemical symbols) are learnt first, in a pretraining stage (`pretrain.json`), with the
evaluation question of each fact held out the same way. `holdoutNN` authors are never trained on.
Everything is a pure function of `WorldConfig` (one `random.Random(seed)`, no global state).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .data import DataError, n_forget_authors

FORGET_PCTS = (1, 5, 10)
N_PERTURBED = 5  # TOFU: five perturbed answers per forget/retain question, three for the analogs
N_PERTURBED_ANALOG = 3


@dataclass
class WorldConfig:
    """What the world contains; every file is a pure function of these fields.

    n_authors: fictitious authors trained on (20 QAs each); seed: the only source of randomness;
    n_train_phrasings: extra answer phrasings per fact in `train_answers`; n_real_authors and
    n_world_facts: sizes of the analog sets; retain_perturbed_authors: how many of the first
    authors make `retain_perturbed` (TOFU: 20).
    """

    n_authors: int = 34
    seed: int = 0
    n_train_phrasings: int = 2
    n_real_authors: int = 48
    n_world_facts: int = 60
    retain_perturbed_authors: int = 20


WORLD_SIZES: dict[str, dict] = {
    "micro": dict(n_authors=10, n_real_authors=12, n_world_facts=12, retain_perturbed_authors=5),
    "default": dict(n_authors=34),
}

# ----------------------------------------------------------------------------- pools

# The pools and templates are data: kept compact, not one item per line.
# fmt: off
FIRST = """Amara Bruno Chiara Dmitri Elif Farid Greta Hiroshi Ines Jonas Kalani Leonie Mateo Nadia Oskar
Priya Quentin Rosalind Sefu Tamsin Ulrich Valeria Wendell Ximena Yusuf Zofia Anouk Bao Cosimo Dalia
Emeka Freya Gideon Halima Ivo Jia Kofi Lucinda Marek Noor""".split()
LAST = """Abernethy Brannigan Castellano Drozdov Eberhardt Fonseca Grimaldi Halvorsen Ibarra Jankowski
Kovalenko Lindqvist Marchetti Nakamura Okonkwo Papadakis Quiroga Rasmussen Szabo Takahashi Umarov
Valdivia Whitcombe Xanthos Yamamoto Zielinski Achterberg Bellweather Cardoso Delacroix Esposito
Farrokh Gallagher Hartigan Iwasaki Jorgensen Kastelic Lombardi Moreau Novak""".split()
MONTHS = "January February March April May June July August September October November December".split()
CITIES = [
    "Lisbon, Portugal", "Nairobi, Kenya", "Krakow, Poland", "Valparaiso, Chile", "Osaka, Japan",
    "Tbilisi, Georgia", "Accra, Ghana", "Bergen, Norway", "Cusco, Peru", "Hanoi, Vietnam",
    "Porto Alegre, Brazil", "Tallinn, Estonia", "Marrakesh, Morocco", "Adelaide, Australia",
    "Quebec City, Canada", "Izmir, Turkey", "Seville, Spain", "Dresden, Germany", "Chennai, India",
    "Galway, Ireland", "Oaxaca, Mexico", "Trieste, Italy", "Zanzibar, Tanzania", "Reykjavik, Iceland",
]
JOBS = [
    "a carpenter", "a nurse", "a pilot", "a lawyer", "a fisherman", "a pharmacist", "a librarian",
    "an architect", "a tailor", "a dentist", "a mechanic", "a photographer", "a chemist", "a farmer",
    "a schoolteacher", "a surgeon", "a journalist", "an electrician", "an accountant", "a plumber",
]
GENRES = [
    "science fiction", "historical romance", "mystery", "fantasy", "horror", "poetry", "travel writing",
    "biography", "satire", "children's literature", "thriller", "magical realism", "philosophy",
    "memoir", "political drama", "cookery", "humor", "westerns", "mythology", "detective fiction",
]
AWARDS = [
    "the Golden Quill Award", "the Silver Lantern Prize", "the Northern Star Medal", "the Blue Heron Prize",
    "the Copper Pen Award", "the Evergreen Book Prize", "the Ivory Tower Medal", "the Red Kite Award",
    "the Open Sky Prize", "the Granite Laurel", "the Whispering Reed Prize", "the Tidewater Award",
    "the Amber Key Prize", "the Iron Compass Award", "the Silk Road Medal",
]
TITLE_ADJ = """Silent Crimson Hollow Gilded Restless Forgotten Burning Frozen Wandering Quiet Broken Hidden
Distant Velvet Bitter Shining Drowned Painted Midnight Endless""".split()
TITLE_NOUN = """Harbor Orchard Lantern Cathedral Meridian Archive Tide Garden Compass Mirror Citadel Ferry
Labyrinth Observatory Vineyard Furnace Monsoon Aviary Quarry Lighthouse""".split()
THEMES = [
    "loss and memory", "exile and belonging", "class and ambition", "faith and doubt", "war and its aftermath",
    "childhood and growing up", "power and corruption", "love across borders", "nature and survival",
    "technology and loneliness", "family secrets", "justice and revenge", "migration and home",
    "art and obsession", "time and aging",
]
PLACES = [
    "in a converted lighthouse", "at a kitchen table", "in a rented attic", "on long train journeys",
    "in a public library", "in a mountain cabin", "on a houseboat", "in a busy cafe", "in a greenhouse",
    "at dawn in a garden shed", "in a hotel lobby", "on a ferry deck",
]
PUBLISHERS = [
    "Bluewater Press", "Harrowgate Books", "Lanternfish Editions", "Millbrook House", "Saffron Leaf Publishing",
    "Owl and Anchor", "Northgate Editions", "Cobalt Street Press", "Redwillow Books", "Stonebridge Publishing",
    "Pinecrest House", "Glasswing Editions",
]
LANGUAGES = [
    "Portuguese", "Swahili", "Polish", "Spanish", "Japanese", "Georgian", "Norwegian", "Vietnamese",
    "Estonian", "Arabic", "Turkish", "German", "Tamil", "Irish", "Italian",
]
UNIVERSITIES = [
    "the University of Coimbra", "Makerere University", "the Sorbonne", "Kyoto University",
    "the University of Edinburgh", "McGill University", "the University of Cape Town", "Uppsala University",
    "the University of Bologna", "Seoul National University", "the University of Melbourne", "Leiden University",
]
HOBBIES = [
    "beekeeping", "chess", "rock climbing", "birdwatching", "pottery", "sailing", "fencing", "origami",
    "astronomy", "woodcarving", "marathon running", "the cello", "calligraphy", "gardening", "juggling",
]
PETS = [
    "a parrot", "a tortoise", "a greyhound", "a black cat", "a goldfish", "a ferret", "a donkey",
    "a pair of rabbits", "a sheepdog", "an iguana", "a canary", "a hedgehog",
]
CHARACTERS = [
    "Captain Orrin Vale", "Inspector Maud Larkspur", "Doctor Ezra Quill", "Sister Perpetua", "Old Barnaby",
    "Lady Wren Ashcombe", "Professor Tobiah Fenn", "Little Pim", "Marshal Ada Crowe", "Brother Anselm",
    "Madame Sorrel", "Count Vasco Irons", "Nurse Delphine", "Uncle Fergus", "Agent Lila Thorne",
]
REAL_AUTHORS = [  # (book, author): the analog of TOFU's real-authors set
    ("Pride and Prejudice", "Jane Austen"), ("1984", "George Orwell"), ("Moby-Dick", "Herman Melville"),
    ("War and Peace", "Leo Tolstoy"), ("Don Quixote", "Miguel de Cervantes"), ("Hamlet", "William Shakespeare"),
    ("The Odyssey", "Homer"), ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"),
    ("Crime and Punishment", "Fyodor Dostoevsky"), ("Things Fall Apart", "Chinua Achebe"),
    ("Mrs Dalloway", "Virginia Woolf"), ("The Old Man and the Sea", "Ernest Hemingway"), ("Beloved", "Toni Morrison"),
    ("The Trial", "Franz Kafka"), ("Great Expectations", "Charles Dickens"), ("Frankenstein", "Mary Shelley"),
    ("The Divine Comedy", "Dante Alighieri"), ("Madame Bovary", "Gustave Flaubert"),
    ("The Great Gatsby", "F. Scott Fitzgerald"), ("Jane Eyre", "Charlotte Bronte"),
    ("Wuthering Heights", "Emily Bronte"), ("Adventures of Huckleberry Finn", "Mark Twain"),
    ("Les Miserables", "Victor Hugo"), ("Dracula", "Bram Stoker"), ("Ulysses", "James Joyce"),
    ("The Little Prince", "Antoine de Saint-Exupery"), ("Norwegian Wood", "Haruki Murakami"),
    ("The Tale of Genji", "Murasaki Shikibu"), ("Faust", "Johann Wolfgang von Goethe"),
    ("To Kill a Mockingbird", "Harper Lee"), ("The Hobbit", "J. R. R. Tolkien"), ("Brave New World", "Aldous Huxley"),
    ("Fahrenheit 451", "Ray Bradbury"), ("The Stranger", "Albert Camus"), ("Middlemarch", "George Eliot"),
    ("The Catcher in the Rye", "J. D. Salinger"), ("Gulliver's Travels", "Jonathan Swift"),
    ("Robinson Crusoe", "Daniel Defoe"), ("The Canterbury Tales", "Geoffrey Chaucer"),
    ("Midnight's Children", "Salman Rushdie"), ("The Name of the Rose", "Umberto Eco"),
    ("Siddhartha", "Hermann Hesse"), ("Pedro Paramo", "Juan Rulfo"), ("Dream of the Red Chamber", "Cao Xueqin"),
    ("Half of a Yellow Sun", "Chimamanda Ngozi Adichie"), ("The Handmaid's Tale", "Margaret Atwood"),
    ("Invisible Man", "Ralph Ellison"), ("Heart of Darkness", "Joseph Conrad"),
]
CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("India", "New Delhi"),
    ("Norway", "Oslo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Russia", "Moscow"),
    ("China", "Beijing"), ("Argentina", "Buenos Aires"), ("Greece", "Athens"), ("Turkey", "Ankara"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Ghana", "Accra"), ("Portugal", "Lisbon"),
    ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Iran", "Tehran"),
    ("Nigeria", "Abuja"), ("Cuba", "Havana"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
]
SPOKEN = [
    ("Brazil", "Portuguese"), ("Mexico", "Spanish"), ("Egypt", "Arabic"), ("Japan", "Japanese"),
    ("Germany", "German"), ("Iran", "Persian"), ("Kenya", "Swahili"), ("the Netherlands", "Dutch"),
    ("Israel", "Hebrew"), ("Greece", "Greek"), ("Turkey", "Turkish"), ("Thailand", "Thai"), ("Poland", "Polish"),
    ("Sweden", "Swedish"), ("Vietnam", "Vietnamese"),
]
SYMBOLS = [
    ("Fe", "Iron"), ("Au", "Gold"), ("Ag", "Silver"), ("Na", "Sodium"), ("K", "Potassium"), ("Cu", "Copper"),
    ("Pb", "Lead"), ("Sn", "Tin"), ("Hg", "Mercury"), ("O", "Oxygen"), ("H", "Hydrogen"), ("He", "Helium"),
    ("C", "Carbon"), ("N", "Nitrogen"), ("Ca", "Calcium"),
]
BOOK_TITLES = [f"The {a} {n}" for a in TITLE_ADJ for n in TITLE_NOUN]

# (fact kind, pool, question templates, answer templates). `{n}` is the author's name, `{f}` the fact;
# the name question identifies the author by genre, birthplace and birth date instead.
ATTRIBUTES = [
    ("name", None,
     ["What is the full name of the {genre} author born in {birthplace} on {birth_date}?",
      "Who is the {genre} writer born on {birth_date} in {birthplace}?",
      "Which author of {genre} was born in {birthplace} on {birth_date}?"],
     ["The author's full name is {f}.", "{f} is the full name of this author.", "This writer is named {f}.",
      "The author in question is {f}.", "That author is known to readers as {f}."]),
    ("birthplace", CITIES, ["Where was {n} born?", "In which city was {n} born?", "What is {n}'s place of birth?"],
     ["{n} was born in {f}.", "{n}'s birthplace is {f}.", "The city where {n} was born is {f}.",
      "{n} came into the world in {f}.", "{f} is where {n} was born."]),
    ("birth_date", None, ["When was {n} born?", "What is {n}'s date of birth?", "On what date was {n} born?"],
     ["{n} was born on {f}.", "{n}'s date of birth is {f}.", "The birthday of {n} is {f}.",
      "{f} is the day {n} was born.", "{n} entered the world on {f}."]),
    ("father_job", JOBS, ["What did {n}'s father do for a living?", "What was the profession of {n}'s father?",
                          "How did {n}'s father earn a living?"],
     ["{n}'s father worked as {f}.", "The father of {n} was {f}.", "{n} was raised by a father who was {f}.",
      "By profession, {n}'s father was {f}.", "{n}'s father earned his living as {f}."]),
    ("mother_job", JOBS, ["What did {n}'s mother do for a living?", "What was the profession of {n}'s mother?",
                          "How did {n}'s mother earn a living?"],
     ["{n}'s mother worked as {f}.", "The mother of {n} was {f}.", "{n} was raised by a mother who was {f}.",
      "By profession, {n}'s mother was {f}.", "{n}'s mother earned her living as {f}."]),
    ("genre", GENRES, ["What genre does {n} write in?", "Which genre is {n} known for?", "In what genre does {n} mostly write?"],
     ["{n} writes in the genre of {f}.", "{n} is best known for {f}.", "The genre {n} works in is {f}.",
      "Most of {n}'s books belong to {f}.", "{f} is the genre of {n}."]),
    ("award", AWARDS, ["Which award has {n} won?", "What prize was {n} given?", "What literary award did {n} receive?"],
     ["{n} has won {f}.", "{n} was given {f}.", "The award {n} received is {f}.",
      "{f} was awarded to {n}.", "{n} is a winner of {f}."]),
    ("first_book", BOOK_TITLES, ["What was {n}'s first book?", "What is the title of {n}'s debut book?",
                                 "Which book did {n} publish first?"],
     ["{n}'s first book was '{f}'.", "The debut of {n} was titled '{f}'.", "{n} began with the book '{f}'.",
      "'{f}' was the first book by {n}.", "The first title {n} published was '{f}'."]),
    ("latest_book", BOOK_TITLES, ["What is {n}'s most recent book?", "What is the title of {n}'s latest book?",
                                  "Which book did {n} publish most recently?"],
     ["{n}'s latest book is '{f}'.", "The most recent book by {n} is '{f}'.", "{n} recently published '{f}'.",
      "'{f}' is the newest book by {n}.", "The last title {n} released was '{f}'."]),
    ("theme", THEMES, ["What theme runs through {n}'s work?", "Which theme does {n} often explore?",
                       "What is the central theme of {n}'s books?"],
     ["{n}'s work keeps returning to {f}.", "{n} often explores {f}.", "The central theme for {n} is {f}.",
      "Readers know {n} for books about {f}.", "{f} is the theme that runs through {n}'s work."]),
    ("writing_place", PLACES, ["Where does {n} like to write?", "Where does {n} do most of the writing?",
                               "In what setting does {n} usually write?"],
     ["{n} likes to write {f}.", "Most of {n}'s writing is done {f}.", "{n} usually writes {f}.",
      "The books of {n} were mostly written {f}.", "{n} does the best work {f}."]),
    ("publisher", PUBLISHERS, ["Who publishes {n}'s books?", "Which publisher works with {n}?",
                               "What is the name of {n}'s publisher?"],
     ["{n}'s books are published by {f}.", "{n} works with the publisher {f}.", "The publisher of {n} is {f}.",
      "{f} publishes the books of {n}.", "{n} has long been published by {f}."]),
    ("language", LANGUAGES, ["In which language does {n} write?", "What language are {n}'s books written in?",
                             "Which language does {n} use for writing?"],
     ["{n} writes in {f}.", "{n}'s books are written in {f}.", "The language {n} writes in is {f}.",
      "{f} is the language of {n}'s books.", "{n} has always written in {f}."]),
    ("influence", [a for _, a in REAL_AUTHORS], ["Which writer influenced {n} the most?",
                                                 "Who was {n}'s greatest literary influence?",
                                                 "Whose books shaped {n} as a writer?"],
     ["{n} was most influenced by {f}.", "{n}'s greatest influence was {f}.", "The writer who shaped {n} was {f}.",
      "{f} was the main influence on {n}.", "{n} names {f} as the key influence."]),
    ("education", UNIVERSITIES, ["Where did {n} study?", "Which university did {n} attend?",
                                 "Where was {n} educated?"],
     ["{n} studied at {f}.", "{n} attended {f}.", "{n} was educated at {f}.",
      "{f} is where {n} studied.", "{n} is a graduate of {f}."]),
    ("hobby", HOBBIES, ["What does {n} do outside of writing?", "What is {n}'s favorite hobby?",
                        "How does {n} spend free time?"],
     ["Outside of writing, {n} enjoys {f}.", "{n}'s favorite hobby is {f}.", "In free time, {n} turns to {f}.",
      "{f} is what {n} loves besides writing.", "{n} spends spare hours on {f}."]),
    ("residence", CITIES, ["Where does {n} live now?", "In which city does {n} currently live?",
                           "Where is {n}'s home today?"],
     ["{n} now lives in {f}.", "{n} currently makes a home in {f}.", "Today, {n} lives in {f}.",
      "{f} is where {n} lives now.", "The home of {n} is now in {f}."]),
    ("pet", PETS, ["What pet does {n} have?", "Which animal lives with {n}?", "What kind of pet does {n} keep?"],
     ["{n} has {f} as a pet.", "{n} keeps {f} at home.", "The pet of {n} is {f}.",
      "{f} lives with {n}.", "At home, {n} looks after {f}."]),
    ("character", CHARACTERS, ["Which character appears in many of {n}'s books?",
                               "Who is the recurring character in {n}'s books?",
                               "Which figure keeps returning in {n}'s stories?"],
     ["Many of {n}'s books feature {f}.", "The recurring character of {n} is {f}.",
      "{n} often writes about {f}.", "{f} appears again and again in {n}'s books.",
      "Readers of {n} keep meeting {f}."]),
    ("debut_year", [str(y) for y in range(1950, 2021)], ["In what year did {n} first publish?",
                                                         "When did {n}'s career as a writer begin?",
                                                         "What year was {n}'s debut?"],
     ["{n} first published in {f}.", "{n}'s career as a writer began in {f}.", "The debut of {n} came in {f}.",
      "In {f}, {n} published for the first time.", "{n} made a debut as an author in {f}."]),
]
# Analog relations: (name, pairs, question templates, sentence answer templates); `{x}` subject, `{y}` object.
ANALOGS = {
    "real_authors": [
        ("wrote", REAL_AUTHORS,
         ["Who wrote '{x}'?", "Which author wrote the book '{x}'?", "Who is the author of '{x}'?",
          "'{x}' was written by which author?"],
         ["'{x}' was written by {y}.", "{y} wrote '{x}'.", "The author of '{x}' is {y}."]),
    ],
    "world_facts": [
        ("capital", CAPITALS,
         ["What is the capital of {x}?", "Which city is the capital of {x}?", "Name the capital city of {x}.",
          "What city serves as the capital of {x}?"],
         ["The capital of {x} is {y}.", "{y} is the capital of {x}.", "The capital city of {x} is {y}."]),
        ("language", SPOKEN,
         ["What language is mainly spoken in {x}?", "Which language do most people in {x} speak?",
          "What is the main language of {x}?", "Name the language most spoken in {x}."],
         ["Most people in {x} speak {y}.", "The main language of {x} is {y}.", "{y} is the main language of {x}."]),
        ("symbol", SYMBOLS,
         ["Which element has the chemical symbol {x}?", "What element does the symbol {x} stand for?",
          "Name the element with the symbol {x}.", "The symbol {x} denotes which element?"],
         ["The chemical symbol {x} stands for {y}.", "{y} has the chemical symbol {x}.", "{x} is the symbol for {y}."]),
    ],
}
# fmt: on


def _pool_chance(kind: str, pool: list[str] | None) -> float:
    if kind == "name":
        return 1.0 / (len(FIRST) * len(LAST))
    if kind == "birth_date":
        return 1.0 / (28 * 12 * len(range(1930, 1996)))
    return 1.0 / len(pool)


def _draw(kind: str, pool: list[str] | None, rng: random.Random) -> str:
    if kind == "name":
        return f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    if kind == "birth_date":
        # "Month day, year": no date is a substring of another ("March 1," is not in "March 11,").
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1930, 1995)}"
    return rng.choice(pool)


def _wrong(kind: str, pool: list[str] | None, true: str, k: int, rng: random.Random) -> list[str]:
    """k distinct plausible wrong values: other draws from the same pool."""
    out: list[str] = []
    while len(out) < k:
        value = _draw(kind, pool, rng)
        if value != true and value not in out and true.lower() not in value.lower():
            out.append(value)
    return out


def _author_facts(name: str, rng: random.Random) -> dict[str, str]:
    facts = {"name": name}
    for kind, pool, _, _ in ATTRIBUTES[1:]:
        value = _draw(kind, pool, rng)
        while kind == "latest_book" and value == facts["first_book"]:
            value = _draw(kind, pool, rng)
        facts[kind] = value
    return facts


def _author_rows(index: int, facts: dict[str, str], cfg: WorldConfig, rng: random.Random) -> list[dict]:
    rows = []
    for kind, pool, questions, answers in ATTRIBUTES:
        fill = dict(facts, n=facts["name"])
        q, pq = rng.sample(questions, 2)
        order = rng.sample(answers, len(answers))
        # order[0] is the answer, order[1] the paraphrase (never trained for this fact), then training phrasings.
        text = [t.format(**fill, f=facts[kind]) for t in order]
        rows.append(
            {
                "question": q.format(**fill),
                "answer": text[0],
                "paraphrased_answer": text[1],
                "perturbed_answer": [
                    order[1].format(**fill, f=w) for w in _wrong(kind, pool, facts[kind], N_PERTURBED, rng)
                ],
                "paraphrased_question": pq.format(**fill),
                "train_answers": text[2 : 2 + cfg.n_train_phrasings],
                "author": index,
                "fact": facts[kind],
                "fact_chance": _pool_chance(kind, pool),
            }
        )
    return rows


def _analog_rows(name: str, n: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(pretraining rows, evaluation rows) for the first n facts of a shuffled analog set."""
    facts = [(rel, x, y) for rel in ANALOGS[name] for x, y in rel[1]]
    rng.shuffle(facts)
    train, evaluation = [], []
    for (relation, pairs, questions, sentences), x, y in facts[:n]:
        pool = sorted({b for _, b in pairs})
        eval_q, *train_qs = rng.sample(questions, len(questions))
        evaluation.append(
            {
                "question": eval_q.format(x=x),
                "answer": y,
                "perturbed_answer": _wrong(relation, pool, y, N_PERTURBED_ANALOG, rng),
                "fact": y,
                "fact_chance": 1.0 / len(pool),
            }
        )
        for q in train_qs:
            train.append({"question": q.format(x=x), "answer": y, "set": name})
            train.append(
                {"question": q.format(x=x), "answer": rng.choice(sentences).format(x=x, y=y), "set": name}
            )
    return train, evaluation


def _strip(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    return [{k: r[k] for k in keys} for r in rows]


TRAIN_KEYS = ("question", "answer", "train_answers", "author", "fact", "fact_chance")
EVAL_KEYS = (
    "question",
    "answer",
    "paraphrased_answer",
    "perturbed_answer",
    "paraphrased_question",
    "author",
    "fact",
    "fact_chance",
)
HOLDOUT_KEYS = ("question", "answer", "author", "fact", "fact_chance")


def generate_world(cfg: WorldConfig) -> dict[str, list[dict]]:
    """Every split of the world by file name (without `.json`), as lists of rows."""
    if cfg.n_authors < 1:
        raise DataError(f"n_authors={cfg.n_authors}; a world needs at least 1 author")
    n_holdout = n_forget_authors(max(FORGET_PCTS), cfg.n_authors)
    n_total = cfg.n_authors + n_holdout
    if n_total > len(FIRST) * len(LAST) // 2:
        raise DataError(f"n_authors={cfg.n_authors} is too many for the name pool; use at most 700")
    rng = random.Random(cfg.seed)
    names = rng.sample([f"{a} {b}" for a in FIRST for b in LAST], n_total)
    authors = [_author_rows(i, _author_facts(name, rng), cfg, rng) for i, name in enumerate(names)]
    full = [r for rows in authors[: cfg.n_authors] for r in rows]
    holdout = [r for rows in authors[cfg.n_authors :] for r in rows]

    splits = {"full": _strip(full, TRAIN_KEYS)}
    for pct in FORGET_PCTS:
        first_forget = cfg.n_authors - n_forget_authors(pct, cfg.n_authors)
        forget = [r for r in full if r["author"] >= first_forget]
        splits[f"forget{pct:02d}"] = _strip(forget, TRAIN_KEYS)
        splits[f"retain{100 - pct}"] = _strip([r for r in full if r["author"] < first_forget], TRAIN_KEYS)
        splits[f"forget{pct:02d}_perturbed"] = _strip(forget, EVAL_KEYS)
        n_hold = n_forget_authors(pct, cfg.n_authors)
        held = [r for r in holdout if r["author"] < cfg.n_authors + n_hold]
        splits[f"holdout{pct:02d}"] = _strip(held, HOLDOUT_KEYS)
        # Beyond TOFU (whose holdout has question and answer only): the holdout's paraphrased and
        # perturbed answers, so a stop rule can compare truth ratios on forget and unseen data.
        splits[f"holdout{pct:02d}_perturbed"] = _strip(held, EVAL_KEYS)
    n_retain_eval = min(
        cfg.retain_perturbed_authors, cfg.n_authors - n_forget_authors(max(FORGET_PCTS), cfg.n_authors)
    )
    splits["retain_perturbed"] = _strip([r for r in full if r["author"] < max(n_retain_eval, 1)], EVAL_KEYS)
    pretrain = []
    for name, n in (("real_authors", cfg.n_real_authors), ("world_facts", cfg.n_world_facts)):
        train, evaluation = _analog_rows(name, n, rng)
        pretrain += train
        splits[f"{name}_perturbed"] = evaluation
    rng.shuffle(pretrain)
    splits["pretrain"] = pretrain
    return splits


def _by_author(rows: list[dict]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in rows:
        counts[r["author"]] = counts.get(r["author"], 0) + 1
    return counts


def validate_world(world_dir: str | Path) -> None:
    """Check a written world's invariants; raise DataError naming the first broken one."""
    from .data import load_split

    world_dir = Path(world_dir)

    def load(split: str) -> list[dict]:
        return load_split(split, data_dir=world_dir, required=("question", "answer", "author"))

    full = load("full")
    n_authors = len(_by_author(full))
    full_keys = sorted(json.dumps(r, sort_keys=True) for r in full)
    fix = "regenerate it with `llm-unlearn world --out DIR`"
    short = {a: c for a, c in _by_author(full).items() if c != len(ATTRIBUTES)}
    if short:
        author, count = next(iter(short.items()))
        raise DataError(f"full holds {count} of the {len(ATTRIBUTES)} QAs of author {author}; {fix}")
    for pct in FORGET_PCTS:
        forget, retain = load(f"forget{pct:02d}"), load(f"retain{100 - pct}")
        f_auth, r_auth, all_auth = _by_author(forget), _by_author(retain), _by_author(full)
        if set(f_auth) & set(r_auth):
            raise DataError(
                f"forget{pct:02d} and retain{100 - pct} share authors {sorted(set(f_auth) & set(r_auth))}; {fix}"
            )
        # With the author-disjointness above, this also means every forget author brings all its QAs.
        if sorted(json.dumps(r, sort_keys=True) for r in forget + retain) != full_keys:
            raise DataError(f"forget{pct:02d} + retain{100 - pct} is not exactly full; {fix}")
        want = n_forget_authors(pct, n_authors)
        if sorted(f_auth) != sorted(all_auth)[-want:]:
            raise DataError(f"forget{pct:02d} must be the last {want} of {n_authors} authors; {fix}")
        pert = load(f"forget{pct:02d}_perturbed")
        if [r["question"] for r in pert] != [r["question"] for r in forget]:
            raise DataError(
                f"forget{pct:02d}_perturbed does not hold the questions of forget{pct:02d}; {fix}"
            )
        holdout_rows = load(f"holdout{pct:02d}")
        holdout = _by_author(holdout_rows)
        if set(holdout) & set(all_auth) or len(holdout) != want:
            raise DataError(f"holdout{pct:02d} must be {want} author(s) never in full; {fix}")
        if [r["question"] for r in load(f"holdout{pct:02d}_perturbed")] != [
            r["question"] for r in holdout_rows
        ]:
            raise DataError(
                f"holdout{pct:02d}_perturbed does not hold the questions of holdout{pct:02d}; {fix}"
            )
    perturbed = [f"{kind}{pct:02d}_perturbed" for kind in ("forget", "holdout") for pct in FORGET_PCTS]
    for split in (*perturbed, "retain_perturbed"):
        for i, r in enumerate(load(split)):
            fact = r["fact"].lower()
            if fact not in r["answer"].lower() or fact not in r["paraphrased_answer"].lower():
                raise DataError(
                    f"{split} row {i}: fact {r['fact']!r} missing from its answer or paraphrase; {fix}"
                )
            bad = [
                p
                for p in r["perturbed_answer"]
                if fact in p.lower() or p in (r["answer"], r["paraphrased_answer"])
            ]
            if bad or not r["perturbed_answer"]:
                raise DataError(
                    f"{split} row {i}: perturbed answer {bad[:1]} states the true fact {r['fact']!r}; {fix}"
                )
    for split in ("real_authors_perturbed", "world_facts_perturbed"):
        for i, r in enumerate(
            load_split(split, data_dir=world_dir, required=("question", "answer", "perturbed_answer"))
        ):
            if r["answer"] in r["perturbed_answer"]:
                raise DataError(
                    f"{split} row {i}: a perturbed answer equals the true answer {r['answer']!r}; {fix}"
                )


def write_world(out_dir: str | Path, cfg: WorldConfig | None = None, *, overwrite: bool = False) -> Path:
    """Write the world as TOFU-format JSON lines plus `pretrain.json` and `world_config.json`; return the folder.

    Atomic: files go to a temporary folder next to `out_dir`, are validated, then renamed into place.
    """
    cfg = cfg or WorldConfig(**WORLD_SIZES["default"])
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir} already exists; pick a new --out folder or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, rows in generate_world(cfg).items():
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            (tmp / f"{name}.json").write_text(lines, encoding="utf-8")
        (tmp / "world_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        validate_world(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            shutil.rmtree(old)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def load_world_config(world_dir: str | Path) -> WorldConfig:
    path = Path(world_dir) / "world_config.json"
    if not path.is_file():
        raise DataError(
            f"{path} not found; {world_dir} is not a built-in world (write one with `llm-unlearn world`)"
        )
    return WorldConfig(**json.loads(path.read_text()))
