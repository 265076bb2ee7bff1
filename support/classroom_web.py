"""The classroom web: a small, generated, labelled stand-in for Common Crawl.

DeepSeekMath section 2.1 mines math pages out of Common Crawl with a fastText classifier seeded
by OpenWebMath, then finds more through the domains its pages come from. To run that loop on a
laptop, offline, this module writes a web whose ground truth is known:

- sites on many domains, each with sections (URL path prefixes): math-only sites, math Q&A
  sites, school sites and general message boards that have one math section among others, and
  plenty of non-math sites (shops, recipes, sports, town news, travel) whose pages are full of
  numbers, prices and quantities, so the classifier has real work;
- math pages in four styles: worked word problems with step-by-step arithmetic ("worked"),
  short explanations of arithmetic rules ("rules"), practice drills ("drill") and forum-style
  questions and answers ("forum");
- a seed corpus (our OpenWebMath) of worked pages only, from the worked-example sites: the
  first classifier knows one style, and the others are found by iterating and by domain
  discovery (a board whose math section has a few worked posts gets its chatty threads added
  as seeds, after which the classifier finds the Q&A sites the seed never covered);
- exact URL repeats and near-duplicate mirrors, for deduplication;
- a few forum pages quoting held-out test problems verbatim, for decontamination.

Every record carries its labels: is_math, contaminated, near_duplicate, style. The math pages are
also meant to teach a ~1-3M parameter model English and the arithmetic patterns (`a + b = c`,
multi-step word problems) that later SFT on GSM8K-style problems builds on. Their word problems
are phrased apart from tasks.py's classroom problems, so only the planted pages quote a test
question.

    python -m support.classroom_web configs/classroom.py     # writes {out_dir}/corpus/web/ and prints a sample
"""

import os
import random
import re

from support.fileio import write_jsonl

MATH_STYLES = ("worked", "rules", "drill", "forum")
# Sites: (kind, number of domains, relative size, [(path prefix, page style, share of its pages)]).
# A style is a math style above or a non-math topic below. Only the worked sites are in the seed.
# Drill, board and school sites keep some worked pages under the same prefix as their other math
# pages, so the first classifier collects enough of them for domain discovery; the Q&A and lesson
# sites have no worked page at all, so only a classifier that learned the new styles finds them.
SITES = (
    ("worked", 4, 1.0, [("examples", "worked", 0.85), ("blog", "news", 0.15)]),
    ("drills", 3, 1.0, [("practice", "worked", 0.3), ("practice", "drill", 0.6), ("shop", "shop", 0.1)]),
    ("boards", 6, 1.5, [("math", "worked", 0.1), ("math", "forum", 0.25), ("cooking", "recipe-chat", 0.2),
                        ("sports", "sports-chat", 0.2), ("offtopic", "chat", 0.25)]),
    ("school", 5, 1.0, [("math", "worked", 0.1), ("math", "rules", 0.25), ("math", "drill", 0.05),
                        ("history", "history", 0.2), ("science", "science", 0.2), ("news", "news", 0.2)]),
    ("askmath", 4, 1.0, [("questions", "forum", 0.9), ("meta", "chat", 0.1)]),
    ("lessons", 4, 1.0, [("rules", "rules", 0.8), ("blog", "news", 0.2)]),
    ("shop", 8, 3.5, [("product", "shop", 0.9), ("help", "chat", 0.1)]),
    ("recipes", 6, 3.5, [("recipe", "recipe", 1.0)]),
    ("sports", 6, 3.5, [("match", "sports", 0.8), ("news", "news", 0.2)]),
    ("town", 5, 3.5, [("news", "news", 0.7), ("weather", "weather", 0.3)]),
    ("travel", 5, 3.5, [("trip", "travel", 1.0)]),
)
URL_REPEAT_SHARE = 0.01  # pages crawled twice under the same URL
MIRROR_SHARE = 0.03  # pages copied to a mirror URL with a line added (near duplicates)

NAMES = ("Amir", "Bella", "Carlos", "Dina", "Eli", "Fatima", "George", "Hana", "Isaac", "Julia",
         "Kofi", "Lena", "Mateo", "Nora", "Oscar", "Priya", "Quinn", "Rita", "Simon", "Tess",
         "Umar", "Vera", "Wes", "Yara")
USERS = ("mathfan", "curious_cat", "night_owl", "pencil_pusher", "dad_of_three", "teacher_jo",
         "bookworm", "quiet_river", "runner42", "chef_at_home", "old_timer", "student_b")
ITEMS = ("notebooks", "oranges", "muffins", "tickets", "seeds", "bottles", "toy cars", "paint brushes",
         "jars of jam", "packets of tea", "bags of rice", "plants")
WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
# The last line of a page.
FOOTERS = ("All rights reserved.", "Share this page with a friend.", "Thanks for reading!",
           "Comments are closed.", "Page last updated this spring.", "Back to the top.")


def compute(a, op, b):
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b


# ---------------------------------------------------------------- word problems (math content)
# A problem is (question, steps, answer); a step is (what it finds, a, op, b). The styles below
# render the same steps as "what: a op b = c." lines, or chatty sentences in words.

def problem_shopping(rng):
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    count, price = rng.randint(2, 9), rng.randint(2, 12)
    total = count * price
    bill = rng.choice([b for b in (20, 50, 100) if b > total] or [total + rng.randint(1, 20)])
    question = (f"{who} goes to the market and picks {count} {item} that cost ${price} each. "
                f"{who} pays with ${bill}. How much change should {who} get back?")
    steps = [(f"the cost of the {item}", count, "*", price), ("the change", bill, "-", total)]
    return question, steps, bill - total


def problem_baking(rng):
    who = rng.choice(NAMES)
    trays, per_tray = rng.randint(2, 6), rng.randint(4, 12)
    eaten = rng.randint(1, trays * per_tray - 1)
    question = (f"For the school fair, {who} bakes {trays} trays of muffins with {per_tray} muffins "
                f"on every tray. The family eats {eaten} of them before the fair. "
                f"How many muffins are left to sell?")
    steps = [("muffins baked", trays, "*", per_tray), ("muffins left to sell", trays * per_tray, "-", eaten)]
    return question, steps, trays * per_tray - eaten


def problem_savings(rng):
    who = rng.choice(NAMES)
    weekly, weeks = rng.randint(3, 15), rng.randint(2, 8)
    saved = weekly * weeks
    spent = rng.randint(2, saved - 1)
    gift = rng.randint(5, 30)
    question = (f"{who} puts ${weekly} into a piggy bank every week for {weeks} weeks. Grandma adds a "
                f"gift of ${gift}. Then {who} spends ${spent} on a new game. "
                f"How much money is in the piggy bank now?")
    steps = [("money saved from the weeks", weekly, "*", weeks), ("money after the gift", saved, "+", gift),
             ("money left after the game", saved + gift, "-", spent)]
    return question, steps, saved + gift - spent


def problem_travel(rng):
    who = rng.choice(NAMES)
    speed, hours, extra = rng.randint(4, 12) * 5, rng.randint(2, 5), rng.randint(5, 40)
    question = (f"{who}'s family drives at {speed} km per hour for {hours} hours, stops for lunch, "
                f"and then drives {extra} km more. How many km do they drive in all?")
    steps = [("km before lunch", speed, "*", hours), ("km in all", speed * hours, "+", extra)]
    return question, steps, speed * hours + extra


def problem_sharing(rng):
    who = rng.choice(NAMES)
    friends, each, kept = rng.randint(2, 8), rng.randint(2, 9), rng.randint(1, 9)
    total = friends * each + kept
    item = rng.choice(ITEMS)
    question = (f"{who} has {total} {item}. {who} keeps {kept} and shares the rest equally among "
                f"{friends} friends. How many {item} does each friend receive?")
    steps = [(f"{item} to share", total, "-", kept), ("each friend's share", total - kept, "/", friends)]
    return question, steps, each


def problem_seats(rng):
    rows, seats = rng.randint(3, 9), rng.randint(5, 12)
    taken = rng.randint(1, rows * seats - 1)
    question = (f"A hall has {rows} rows with {seats} chairs in each row. {taken} people are already "
                f"sitting down. How many empty chairs are there?")
    steps = [("chairs in the hall", rows, "*", seats), ("empty chairs", rows * seats, "-", taken)]
    return question, steps, rows * seats - taken


def problem_library(rng):
    start, lent, back = rng.randint(40, 90), rng.randint(5, 30), rng.randint(2, 20)
    back = min(back, lent)
    question = (f"A class library starts the week with {start} books on the shelf. Students borrow "
                f"{lent} books and later bring back {back} of them. How many books are on the shelf at the end of the week?")
    steps = [("books after borrowing", start, "-", lent), ("books at the end of the week", start - lent, "+", back)]
    return question, steps, start - lent + back


def problem_garden(rng):
    who = rng.choice(NAMES)
    beds, plants, died = rng.randint(2, 7), rng.randint(3, 10), rng.randint(1, 5)
    extra = rng.randint(2, 15)
    question = (f"{who} plants {beds} garden beds with {plants} tomato plants in each bed. {died} plants "
                f"do not survive the frost, so {who} buys {extra} new ones. How many tomato plants grow in the garden?")
    steps = [("plants at first", beds, "*", plants), ("plants after the frost", beds * plants, "-", died),
             ("plants with the new ones", beds * plants - died, "+", extra)]
    return question, steps, beds * plants - died + extra


PROBLEMS = (problem_shopping, problem_baking, problem_savings, problem_travel, problem_sharing,
            problem_seats, problem_library, problem_garden)


def random_problem(rng):
    return rng.choice(PROBLEMS)(rng)


def worked_lines(steps):
    """Steps as equation lines: "Cost of the tickets: 4 * 6 = 24." """
    return [f"{what[0].upper()}{what[1:]}: {a} {op} {b} = {compute(a, op, b)}." for what, a, op, b in steps]


def chatty_lines(rng, steps):
    """Steps as a person would type them in a forum reply, in words."""
    openers = ("First work out {what}.", "Start with {what}.", "You need {what} first.")
    middles = ("Then {what}:", "Next comes {what}.", "After that, {what}.")
    lines = []
    for i, (what, a, op, b) in enumerate(steps):
        lead = rng.choice(openers if i == 0 else middles).format(what=what)
        result = compute(a, op, b)
        lines.append(f"{lead} {a} {WORDS[op]} {b} {rng.choice(('is', 'makes', 'gives you'))} {result}.")
    return lines


# ---------------------------------------------------------------- page texts, one per style

def page_worked(rng):
    topic = rng.choice(("money", "sharing", "measuring", "everyday problems", "two-step problems"))
    parts = [f"Worked examples: {topic}",
             rng.choice(("Read each problem, then follow the steps.",
                         "Each example shows every step of the calculation.",
                         "Try each problem yourself before reading the solution."))]
    for k in range(1, rng.randint(3, 6) + 1):
        question, steps, answer = random_problem(rng)
        parts.append(f"Example {k}. {question}\nSolution:\n" + "\n".join(worked_lines(steps)) +
                     f"\nThe answer is {answer}.")
    return "\n\n".join(parts)


def rule_examples(rng):
    """One arithmetic rule: (title, explanation with freshly computed examples)."""
    a, b, c = rng.randint(12, 89), rng.randint(2, 9), rng.randint(11, 49)
    pick = rng.randrange(7)
    if pick == 0:
        return ("Adding in any order", f"You can add two numbers in either order and get the same sum. "
                f"{a} plus {c} is {a + c}, and {c} plus {a} is also {a + c}. Start with the larger number "
                f"when you add in your head.")
    if pick == 1:
        return ("Multiplying by ten", f"To multiply a whole number by ten, write a zero after its last digit. "
                f"So {a} times 10 is {a * 10}, and {c} times 10 is {c * 10}.")
    if pick == 2:
        return ("Checking a subtraction", f"Every subtraction can be checked with an addition. "
                f"If {a + c} minus {c} is {a}, then {a} plus {c} must give back {a + c}, and it does.")
    if pick == 3:
        q, r = a // b, rng.randint(1, b - 1)
        a = b * q + r
        return ("Division with a remainder", f"When a number does not divide evenly, the part left over is "
                f"the remainder. {a} divided by {b} is {q} with remainder {r}, because {b} times {q} is "
                f"{b * q}, and {b * q} plus {r} is {a}.")
    if pick == 4:
        tens, ones = rng.randint(1, 4) * 10, rng.randint(1, 9)
        c = tens + ones
        return ("Splitting a number to multiply", f"To multiply by a two-digit number, split it into tens and "
                f"ones. {b} times {c} is {b} times {tens} plus {b} times {ones}, which is {b * tens} plus "
                f"{b * ones}, or {b * c}.")
    if pick == 5:
        return ("Multiply before you add", f"When a sum and a product are written together, do the product "
                f"first. In {a} plus {b} times {c}, work out {b} times {c}, which is {b * c}, then add {a} "
                f"to get {a + b * c}.")
    return ("Doubling and halving", f"Doubling a number is adding it to itself. Double {a} is {a} plus {a}, "
            f"which is {2 * a}. Half of {2 * c} is {c}, because {c} plus {c} is {2 * c}.")


def page_rules(rng):
    parts = []
    for _ in range(rng.randint(3, 4)):
        title, text = rule_examples(rng)
        parts.append(f"Lesson: {title}\n{text}")
    a, b = rng.randint(11, 60), rng.randint(2, 9)
    parts.append(f"Quick check: what is {a} times {b}? Answer: {a * b}.")
    return "\n\n".join(parts)


def page_drill(rng):
    op = rng.choice("+-*")
    lines = [f"Practice set: {dict(zip('+-*', ('addition', 'subtraction', 'multiplication')))[op]}",
             "Work each one out, then cover the answers and try again."]
    for k in range(1, rng.randint(8, 14) + 1):
        a, b = (rng.randint(10, 99), rng.randint(2, 9)) if op == "*" else (rng.randint(10, 99), rng.randint(10, 99))
        if op == "-" and b > a:
            a, b = b, a
        lines.append(f"{k}) {a} {op} {b} = {compute(a, op, b)}")
    return "\n".join(lines)


def thread(rng, title, opening, replies):
    """A message-board thread: title, the opening post, then the replies, each with a user name."""
    users = rng.sample(USERS, len(replies) + 1)
    posts = [f"{title}\n\n{users[0]} wrote:\n{opening}"]
    posts += [f"{user} replied:\n{reply}" for user, reply in zip(users[1:], replies)]
    return "\n\n".join(posts)


def page_forum(rng, quoted=None):
    """A math question and its answers. `quoted` = (question, solution) quotes that problem verbatim."""
    question, steps, answer = random_problem(rng)
    asking = rng.choice(("I'm stuck on this one from my homework:", "Can someone explain this?",
                         "My kid brought this home and I can't remember how to do it.",
                         "Is my answer right?"))
    if quoted is None:
        reply = " ".join(chatty_lines(rng, steps)) + f" So the answer is {answer}."
    else:
        question, solution = quoted
        reply = f"Here is how I worked it out.\n{solution}"
    thanks = rng.choice(("Thanks, that makes sense now!", "Oh I see, thank you.",
                         "Got it. I was doing the steps in the wrong order."))
    return thread(rng, f"Help with a word problem ({rng.choice(('money', 'sharing', 'homework', 'grade 4'))})",
                  f"{asking} {question}", [reply, thanks])


def page_shop(rng):
    product = rng.choice(("wool scarf", "steel water bottle", "desk lamp", "garden hose", "rain jacket",
                          "coffee mug", "backpack", "phone case", "yoga mat", "cooking pot"))
    price, stock, stars = rng.randint(5, 120), rng.randint(1, 40), rng.randint(3, 5)
    reviews = rng.sample((
        "Arrived in {d} days and works well.", "Good value for the price.", "The color is nicer than in the photo.",
        "I bought {n} of these as gifts.", "Smaller than I expected but still useful.",
        "Second one I have ordered, very happy.", "Took {d} days to arrive, packaging was fine.",
        "Cheaper here than in the shops in town."), 3)
    lines = [f"{product.title()} - only ${price}.{rng.choice(('99', '49', '00'))}",
             f"Our {product} comes in {rng.randint(2, 6)} colors. {stock} left in stock. "
             f"Orders over ${rng.choice((30, 50, 75))} ship free, and delivery takes {rng.randint(2, 7)} days.",
             f"Buy {rng.randint(2, 4)} and save {rng.choice((10, 15, 20, 25))} percent this week only.",
             f"Rated {stars} out of 5 by {rng.randint(3, 400)} customers."]
    lines += [f'"{r.format(d=rng.randint(2, 9), n=rng.randint(2, 5))}" - {rng.choice(NAMES)}' for r in reviews]
    return "\n".join(lines)


def page_recipe(rng):
    dish = rng.choice(("banana bread", "vegetable soup", "apple pie", "pancakes", "lemon cake",
                       "tomato pasta", "chicken curry", "oat cookies", "bean chili", "rice pudding"))
    ingredients = rng.sample((f"{rng.randint(1, 4)} cups of flour", f"{rng.randint(2, 6)} eggs",
                              f"{rng.randint(50, 250)} grams of butter", f"{rng.randint(2, 3)} onions",
                              f"{rng.randint(100, 500)} ml of milk", f"{rng.randint(1, 4)} spoons of sugar",
                              "a pinch of salt", f"{rng.randint(2, 6)} tomatoes", f"{rng.randint(2, 3)} lemons"), 5)
    minutes = rng.randint(15, 70)
    return (f"{dish.title()}\nServes {rng.randint(2, 8)}. Preparation {rng.randint(5, 30)} minutes, "
            f"cooking {minutes} minutes.\n\nIngredients: " + ", ".join(ingredients) + ".\n\n"
            f"Method: {rng.choice(('Preheat the oven to', 'Heat the pan to about'))} {rng.choice((160, 180, 200, 220))} degrees. "
            f"{rng.choice(('Mix the dry ingredients first', 'Chop everything before you start', 'Melt the butter slowly'))}, "
            f"then {rng.choice(('stir in the rest', 'fold in the eggs', 'add the milk a little at a time'))}. "
            f"Cook for {minutes} minutes and {rng.choice(('serve warm', 'let it cool before slicing', 'serve with bread'))}.\n"
            f"Tip: {rng.choice(('it keeps for 3 days in the fridge.', 'double the amounts for a party.', 'use ripe fruit for more flavor.'))}")


TEAMS = ("River City", "Hill Town", "Northfield", "Lakeside", "Old Harbor", "Green Valley",
         "Stone Bridge", "Eastport")


def page_sports(rng):
    home, away = rng.sample(TEAMS, 2)
    hs, as_ = rng.randint(0, 5), rng.randint(0, 5)
    verdict = "beat" if hs > as_ else "lost to" if hs < as_ else "drew with"
    return (f"{home} {verdict} {away} {hs}-{as_}\n\n{home} {verdict} {away} {hs}-{as_} on "
            f"{rng.choice(('Saturday', 'Sunday', 'Wednesday night'))} in front of {rng.randint(800, 20000)} fans. "
            f"{rng.choice(NAMES)} scored in the {rng.randint(2, 89)}th minute"
            f"{rng.choice((' and again just after half time', '', ' with a long shot'))}. "
            f"After {rng.randint(5, 30)} games {home} {rng.choice(('sit', 'are', 'stay'))} in "
            f"{rng.choice(('first', 'third', 'fifth', 'eighth'))} place with {rng.randint(8, 60)} points. "
            f"The coach said the team {rng.choice(('played with heart', 'must defend better', 'was tired after the trip', 'earned the result'))}. "
            f"Next up is a trip to {rng.choice(TEAMS)} in {rng.randint(3, 14)} days.")


def page_news(rng):
    place = rng.choice(("the library", "the old mill", "the park", "the town hall", "the river path", "the school"))
    return (f"News: work starts at {place}\n\n"
            f"The council voted {rng.randint(5, 9)} to {rng.randint(0, 4)} on {rng.choice(('Monday', 'Tuesday', 'Thursday'))} "
            f"to repair {place}. The work will cost about ${rng.randint(20, 900)},000 and should take "
            f"{rng.randint(2, 18)} months. {rng.choice(NAMES)}, who has lived here for {rng.randint(3, 60)} years, "
            f"said {rng.choice(('it is about time', 'she hopes the noise will not last', 'he will miss the old building', 'the town needs it'))}. "
            f"About {rng.randint(20, 300)} people came to the meeting. "
            f"{rng.choice(('A public walk is planned for the spring.', 'Parking will be closed during the work.', 'The next meeting is in the autumn.'))}")


def page_weather(rng):
    return (f"Weather this week\n\nExpect highs of {rng.randint(8, 34)} degrees and lows of {rng.randint(-5, 15)}. "
            f"There is a {rng.randint(1, 9)}0 percent chance of rain on {rng.choice(('Tuesday', 'Friday', 'Sunday'))}, "
            f"with winds up to {rng.randint(10, 70)} km per hour near the coast. "
            f"{rng.choice(('Bring a coat in the evening.', 'Good days for the garden.', 'Roads may be icy early on.'))}")


def page_travel(rng):
    city = rng.choice(("Lisbon", "Kyoto", "Oslo", "Cusco", "Nairobi", "Quebec", "Hanoi", "Tbilisi"))
    return (f"Our trip to {city}\n\nWe spent {rng.randint(3, 14)} nights in {city} and drove about "
            f"{rng.randint(100, 900)} km around the region. The hotel cost ${rng.randint(40, 200)} a night, "
            f"{rng.choice(('breakfast included', 'with a view of the old town', 'a bit noisy but clean'))}. "
            f"The best day was the walk to {rng.choice(('the waterfall', 'the castle', 'the market', 'the lake'))}, "
            f"about {rng.randint(5, 25)} km there and back. "
            f"{rng.choice(('We would go again.', 'Bring good shoes.', 'Book the train early, it fills up.'))}")


def page_history(rng):
    year = rng.randint(1400, 1950)
    return (f"History: {rng.choice(('the bridge', 'the harbor', 'the railway', 'the first school', 'the market square'))}\n\n"
            f"In {year} the town {rng.choice(('built', 'opened', 'rebuilt', 'lost'))} it after "
            f"{rng.choice(('a long winter', 'a great fire', 'years of debate', 'a flood'))}. "
            f"About {rng.randint(2, 90)} families lived nearby, and most worked "
            f"{rng.choice(('on farms', 'at the mill', 'on the boats', 'in the mines'))}. "
            f"{rng.randint(10, 80)} years later it was {rng.choice(('still in use', 'replaced', 'turned into a museum'))}.")


SCIENCE_FACTS = {"plants": "Plants need light, water and air to grow.",
                 "the water cycle": "Water rises as vapor and falls again as rain.",
                 "magnets": "A magnet pulls on iron but not on wood.",
                 "the moon": "The moon takes about 27 days to go around the Earth.",
                 "sound": "Sound travels faster in water than in air.",
                 "bees": "A bee visits many flowers in one trip."}


def page_science(rng):
    topic = rng.choice(sorted(SCIENCE_FACTS))
    return (f"Science corner: {topic}\n\n{SCIENCE_FACTS[topic]} "
            f"In our class experiment we watched {topic} for {rng.randint(2, 6)} weeks and wrote notes every day. "
            f"{rng.choice(('The results surprised us.', 'Next term we will try it again.', 'Ask your teacher for the worksheet.'))}")


def page_chat(rng, topic="offtopic"):
    """A non-math thread (cooking, sports or off-topic boards share the forum look with math threads)."""
    if topic == "recipe-chat":
        opening = f"Has anyone made {rng.choice(('bread', 'soup', 'jam', 'curry'))} with {rng.randint(2, 5)} cups of {rng.choice(('flour', 'stock', 'fruit'))}? Mine came out {rng.choice(('dry', 'too thin', 'great'))}."
        reply = f"I use {rng.randint(1, 4)} cups and cook it for {rng.randint(10, 60)} minutes. Works every time."
    elif topic == "sports-chat":
        opening = f"What a game! {rng.choice(TEAMS)} won {rng.randint(4, 6)}-{rng.randint(0, 3)} and the keeper saved {rng.randint(2, 9)} shots."
        reply = f"We have {rng.randint(3, 12)} games left, I think we can finish in the top {rng.randint(2, 5)}."
    else:
        opening = rng.choice(("What are you all reading this month?", "Anyone else up this early?",
                              "Our cat knocked {n} plants off the window again.", "Which phone would you buy for under ${p}?"))
        opening = opening.format(n=rng.randint(2, 5), p=rng.randint(100, 500))
        reply = rng.choice(("Same here, ha.", "Try the library sale, books for $1 each.", "Give it a week and ask again."))
    return thread(rng, rng.choice(("Question", "Quick one", "Chat", "Anyone?")), opening, [reply, "Thanks!"])


def page_text(rng, style):
    if style == "worked":
        return page_worked(rng)
    if style == "rules":
        return page_rules(rng)
    if style == "drill":
        return page_drill(rng)
    if style == "forum":
        return page_forum(rng)
    if style in ("chat", "recipe-chat", "sports-chat"):
        return page_chat(rng, style)
    return {"shop": page_shop, "recipe": page_recipe, "sports": page_sports, "news": page_news,
            "weather": page_weather, "travel": page_travel, "history": page_history,
            "science": page_science}[style](rng)


# ---------------------------------------------------------------- the web

DOMAIN_WORDS = ("bright", "maple", "north", "river", "sunny", "cedar", "harbor", "silver", "meadow",
                "summit", "willow", "copper")
TLDS = {"worked": ".org", "lessons": ".edu", "drills": ".com", "askmath": ".net", "boards": ".com",
        "school": ".edu", "shop": ".shop", "recipes": ".com", "sports": ".com", "town": ".gov", "travel": ".blog"}


def domains(rng):
    """[(domain, kind, relative size, sections)] of the web, the same for the same seed."""
    out = []
    for kind, count, size, sections in SITES:
        words = rng.sample(DOMAIN_WORDS, count)
        out += [(f"{word}{kind}{TLDS[kind]}", kind, size, sections) for word in words]
    return out


def page_record(rng, domain, prefix, style, number):
    text = page_text(rng, style) + "\n\n" + rng.choice(FOOTERS)
    slug = "-".join(re.findall(r"[a-z0-9]+", text.split("\n", 1)[0].lower())[:5])
    return {"url": f"https://{domain}/{prefix}/{number}-{slug}", "text": text,
            "is_math": style in MATH_STYLES, "style": style,
            "contaminated": False, "near_duplicate": False}


def generate_web(seed, pool_pages, seed_pages, test_problems=(), contaminated_pages=0):
    """The classroom web: (seed records, pool records), the same for the same arguments.

    seed records are worked-example pages from the worked sites (our OpenWebMath), pool records
    are the crawl (about pool_pages, plus URL repeats and mirrors). test_problems is a list of
    (question, solution) pairs; `contaminated_pages` forum pages in the pool quote one verbatim.
    """
    rng = random.Random(seed)
    sites = domains(rng)
    weights = [size for _, _, size, _ in sites]
    pool = []
    for number in range(pool_pages - contaminated_pages):
        domain, kind, _, sections = rng.choices(sites, weights)[0]
        prefix, style, _ = rng.choices(sections, [share for _, _, share in sections])[0]
        pool.append(page_record(rng, domain, prefix, style, number))
    mirrors = [dict(page, url=page["url"].replace("https://", "https://mirror."), near_duplicate=True,
                    text=page["text"] + " Mirrored from the original site.")
               for page in rng.sample(pool, int(MIRROR_SHARE * len(pool)))]
    repeats = [dict(page, near_duplicate=True) for page in rng.sample(pool, int(URL_REPEAT_SHARE * len(pool)))]
    forums = [(domain, sections[0][0]) for domain, kind, _, sections in sites if kind in ("boards", "askmath")]
    quoting = []
    for k in range(contaminated_pages if test_problems else 0):
        domain, prefix = rng.choice(forums)
        record = page_record(rng, domain, prefix, "forum", pool_pages + k)
        record["text"] = page_forum(rng, quoted=test_problems[k % len(test_problems)])
        record["contaminated"] = True
        quoting.append(record)
    pool += mirrors + repeats + quoting
    rng.shuffle(pool)
    worked_sites = [domain for domain, kind, _, _ in sites if kind == "worked"]
    seeds = [page_record(rng, rng.choice(worked_sites), "examples", "worked", pool_pages * 2 + k)
             for k in range(seed_pages)]
    return seeds, pool


def write_web(folder, seed, pool_pages, seed_pages, shards, test_problems=(), contaminated_pages=0):
    """Write the web as page files: seed.jsonl and pool-NNNNN.jsonl (one per shard). Returns
    (seed path, [pool paths])."""
    seeds, pool = generate_web(seed, pool_pages, seed_pages, test_problems, contaminated_pages)
    seed_path = os.path.join(folder, "seed.jsonl")
    write_jsonl(seed_path, seeds)
    pool_paths = [os.path.join(folder, f"pool-{k:05d}.jsonl") for k in range(shards)]
    for k, path in enumerate(pool_paths):
        write_jsonl(path, pool[k::shards])
    return seed_path, pool_paths


if __name__ == "__main__":
    from support import config

    cfg = config.main_config()
    seeds, pool = generate_web(cfg.seed, 200, 10)
    by_style = {}
    for page in pool:
        by_style.setdefault(page["style"], page)
    for style, page in sorted(by_style.items()):
        print(f"==== {style}  {page['url']}\n{page['text']}\n")
