"""Synthetic knowledge for tiny presets: fictional people with LAMA-style facts, and a small commonsense
world (objects, places, uses, goals) with sentences and multiple-choice questions.

Entity names are invented, so no model can know the facts beforehand: answering needs the KG.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lmlab.methods.knowledge.kg import KnowledgeGraph, Probe, Triple

ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "pl", "st", "tr"]
VOWELS = ["a", "e", "i", "o", "u"]
CODAS = ["", "", "n", "r", "s", "x", "l"]

# relation -> (LAMA-style template, size of its object pool)
PERSON_RELATIONS = {
    "born_in": ("[X] was born in [Y] .", 20),
    "works_for": ("[X] works for [Y] .", 15),
    "speaks": ("[X] speaks [Y] .", 10),
    "citizen_of": ("[X] is a citizen of [Y] .", 10),
}

# the same relations asked in other words: lexical retrieval cannot match these to the templates above
PERSON_PARAPHRASES = {
    "born_in": "the birthplace of [X] is [Y] .",
    "works_for": "the employer of [X] is [Y] .",
    "speaks": "the language of [X] is [Y] .",
    "citizen_of": "the country of [X] is [Y] .",
}


def fictional_names(n: int, rng: random.Random, syllables=(2, 3), taken: set[str] | None = None) -> list[str]:
    """n distinct pronounceable invented words (e.g. 'trobex')."""
    taken = set(taken or ())
    out = []
    while len(out) < n:
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                    for _ in range(rng.randint(*syllables)))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


@dataclass
class PersonWorld:
    kg: KnowledgeGraph
    people: list[str]
    pools: dict[str, list[str]]  # relation -> its possible objects

    def probes(self, people: list[str] | None = None, paraphrase: bool = False) -> list[Probe]:
        """One cloze probe per (person, relation), answer read from the current KG; `paraphrase` asks
        with `PERSON_PARAPHRASES` instead of the KG's own templates."""
        out = []
        for p in people if people is not None else self.people:
            for rel in self.pools:
                tpl = PERSON_PARAPHRASES[rel] if paraphrase else self.kg.template(rel)
                for obj in self.kg.objects(p, rel):
                    out.append(Probe(p, rel, obj, tpl))
        return out

    def redraw(self, people: list[str], rng: random.Random) -> list[tuple[Triple, Triple]]:
        """Change every fact of `people` to a different object of the same pool; returns (old, new) pairs."""
        changes = []
        for p in people:
            for rel, pool in self.pools.items():
                for old in self.kg.objects(p, rel):
                    new = rng.choice([o for o in pool if o != old])
                    self.kg.update(p, rel, new)
                    changes.append((Triple(p, rel, old), Triple(p, rel, new)))
        return changes


def person_world(n_people: int = 300, seed: int = 0, relations: dict | None = None,
                 pools: dict[str, list[str]] | None = None, exclude: set[str] | None = None) -> PersonWorld:
    """Each fictional person gets one object per relation, drawn uniformly from that relation's pool.

    Pass `pools` (and `exclude`, names already used) to make a second world with the same objects and
    new people, e.g. a large training world and a separate evaluation world."""
    rng = random.Random(seed)
    relations = relations or PERSON_RELATIONS
    taken: set[str] = set(exclude or ())
    if pools is None:
        pools = {rel: fictional_names(size, rng, (2, 2), taken) for rel, (_, size) in relations.items()}
    taken |= {o for pool in pools.values() for o in pool}
    people = fictional_names(n_people, rng, (2, 3), taken)
    kg = KnowledgeGraph(templates={rel: relations[rel][0] for rel in pools})
    for p in people:
        for rel, pool in pools.items():
            kg.add(p, rel, rng.choice(pool))
    return PersonWorld(kg, people, pools)


# ---------------------------------------------------------------------- commonsense world
PLACES = ["kitchen", "garden", "garage", "office", "school", "library", "park", "beach", "forest", "market",
          "bedroom", "harbor", "farm", "museum", "station", "hospital"]
ACTIONS = ["cut", "clean", "write", "cook", "carry", "play", "build", "read", "paint", "fix", "store", "light"]
GOALS = ["eat", "relax", "learn", "travel", "earn", "create", "stay safe", "look good", "be tidy", "have fun"]
# sentence filler: common words (including the question's own words), as in running text
FILLER = ["the", "a", "my", "her", "his", "our", "old", "new", "small", "big", "red", "blue", "near", "by", "on", "in", "at", "with", "today", "yesterday", "again", "often", "never", "always", "some", "every", "one", "you", "i", "we", "she", "he", "spot", "saw", "found", "left", "keep", "what", "where", "is", "it", "place", "put"]
QUESTION = "you spot a {o} by the {cue} . what place is near where it is found ?"


@dataclass
class MCQuestion:
    question: str
    choices: list[str]
    answer: int
    entity: str


@dataclass
class CommonsenseWorld:
    """ConceptNet-style world: object AtLocation place LocatedNear place'; object UsedFor action
    MotivatedByGoal goal. Every place has cue words that sentences mention next to an object.

    `kg` holds the facts of the objects in `kg_objects` only; `novel_objects` are real in the world
    (`full_kg`) but absent from `kg`, so knowledge about them is new to the KG."""
    full_kg: KnowledgeGraph
    kg: KnowledgeGraph
    kg_objects: list[str]
    novel_objects: list[str]
    places: list[str]
    cues: dict[str, list[str]]  # place -> cue words
    location: dict[str, str] = field(default_factory=dict)

    def gold_paths(self, obj: str) -> list[list[Triple]]:
        """The object's 2-hop chains in the full world."""
        out = []
        for t1 in self.full_kg.about(obj):
            if t1.head != obj:
                continue
            nxt = [t for t in self.full_kg.about(t1.tail) if t.head == t1.tail]
            out.extend([[t1, t2] for t2 in nxt] or [[t1]])
        return out

    def sentence(self, obj: str, rng: random.Random, n_filler: tuple[int, int] = (4, 9)) -> str:
        """Random filler words with the object and one cue of its place at random positions."""
        words = [rng.choice(FILLER) for _ in range(rng.randint(*n_filler))]
        for w in (obj, rng.choice(self.cues[self.location[obj]])):
            words.insert(rng.randint(0, len(words)), w)
        return " ".join(words) + " ."

    def near(self, obj: str) -> str:
        return self.full_kg.objects(self.location[obj], "LocatedNear")[0]

    def question(self, obj: str, rng: random.Random, n_choices: int = 5) -> MCQuestion:
        """'Which place is near where X is found?' with balanced random distractor places."""
        answer = self.near(obj)
        choices = rng.sample([p for p in self.places if p != answer], n_choices - 1) + [answer]
        rng.shuffle(choices)
        q = QUESTION.format(o=obj, cue=rng.choice(self.cues[self.location[obj]]))
        return MCQuestion(q, choices, choices.index(answer), obj)


def commonsense_world(n_objects: int = 80, n_novel: int = 20, n_places: int = 12, n_actions: int = 10,
                      n_goals: int = 8, cues_per_place: int = 2, seed: int = 0) -> CommonsenseWorld:
    rng = random.Random(seed)
    places, actions, goals = PLACES[:n_places], ACTIONS[:n_actions], GOALS[:n_goals]
    taken = set(places + actions + goals + FILLER)
    cue_words = fictional_names(n_places * cues_per_place, rng, (2, 2), taken)
    cues = {p: cue_words[i * cues_per_place:(i + 1) * cues_per_place] for i, p in enumerate(places)}
    objects = fictional_names(n_objects + n_novel, rng, (2, 3), taken)
    shift = rng.randrange(1, n_places)  # LocatedNear: a fixed-point-free permutation of places
    static = [(p, "LocatedNear", places[(i + shift) % n_places]) for i, p in enumerate(places)]
    static += [(a, "MotivatedByGoal", rng.choice(goals)) for a in actions]
    full = KnowledgeGraph(static)
    kg = KnowledgeGraph(static)
    location = {}
    for i, o in enumerate(objects):
        location[o] = places[i % n_places] if i < n_places else rng.choice(places)
        facts = [(o, "AtLocation", location[o]), (o, "UsedFor", rng.choice(actions))]
        for f in facts:
            full.add(*f)
            if i < n_objects:
                kg.add(*f)
    order = objects[:n_objects]
    return CommonsenseWorld(full, kg, order, objects[n_objects:], places, cues, location)
