"""Fact tables and word lists behind the synthetic corpora (written for this project, license-clean).

Kept apart from the generators so the data can be read and checked at a glance. Every word appears in
at most one row of a table whose questions could otherwise have two right answers (e.g. "light" is in
one pair of opposites only). Spelling is US English, matching the US voices that speak it.
"""

from __future__ import annotations

# (country, capital, extra answer aliases)
CAPITALS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("France", "Paris", ()), ("Germany", "Berlin", ()), ("Italy", "Rome", ()), ("Spain", "Madrid", ()),
    ("Portugal", "Lisbon", ()), ("Japan", "Tokyo", ()), ("China", "Beijing", ("peking",)),
    ("India", "New Delhi", ("delhi",)), ("Russia", "Moscow", ()), ("Egypt", "Cairo", ()),
    ("Kenya", "Nairobi", ()), ("Canada", "Ottawa", ()), ("Mexico", "Mexico City", ()),
    ("Brazil", "Brasilia", ("brasília",)), ("Argentina", "Buenos Aires", ()), ("Peru", "Lima", ()),
    ("Chile", "Santiago", ()), ("Australia", "Canberra", ()), ("Greece", "Athens", ()), ("Norway", "Oslo", ()),
    ("Sweden", "Stockholm", ()), ("Finland", "Helsinki", ()), ("Denmark", "Copenhagen", ()),
    ("Poland", "Warsaw", ()), ("Ireland", "Dublin", ()), ("Austria", "Vienna", ()), ("Hungary", "Budapest", ()),
    ("the Czech Republic", "Prague", ()), ("Thailand", "Bangkok", ()), ("Vietnam", "Hanoi", ()),
    ("South Korea", "Seoul", ()), ("the Philippines", "Manila", ()), ("Turkey", "Ankara", ()),
    ("Iran", "Tehran", ()), ("Iraq", "Baghdad", ()), ("Saudi Arabia", "Riyadh", ()), ("Morocco", "Rabat", ()),
    ("Nigeria", "Abuja", ()), ("Ghana", "Accra", ()), ("Ethiopia", "Addis Ababa", ()), ("Cuba", "Havana", ()),
    ("Colombia", "Bogota", ("bogotá",)), ("Belgium", "Brussels", ()), ("Switzerland", "Bern", ("berne",)),
    ("the United Kingdom", "London", ()), ("the United States", "Washington, D.C.", ("washington",)),
    ("New Zealand", "Wellington", ()), ("Iceland", "Reykjavik", ()), ("Ukraine", "Kyiv", ("kiev",)),
)

# (thing, color): "What color is <thing>?"
COLORS: tuple[tuple[str, str], ...] = (
    ("the sky on a clear day", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
    ("a ripe banana", "yellow"), ("a ripe tomato", "red"), ("a lemon", "yellow"), ("a carrot", "orange"),
    ("milk", "white"), ("chocolate", "brown"), ("a strawberry", "red"), ("a frog", "green"), ("a crow", "black"),
    ("a flamingo", "pink"), ("a pumpkin", "orange"), ("an eggplant", "purple"), ("a polar bear", "white"),
    ("a lime", "green"), ("a cherry", "red"), ("a school bus", "yellow"), ("a raven", "black"),
)

# (animal, sound, verb, extra aliases): "What sound does a <animal> make?"
ANIMAL_SOUNDS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("dog", "woof", "barks", ("bark", "barks")), ("cat", "meow", "meows", ("miaow", "meows")),
    ("cow", "moo", "moos", ("moos",)), ("sheep", "baa", "bleats", ("bleat",)), ("duck", "quack", "quacks", ()),
    ("pig", "oink", "oinks", ()), ("horse", "neigh", "neighs", ("whinny",)), ("lion", "roar", "roars", ()),
    ("owl", "hoot", "hoots", ()), ("snake", "hiss", "hisses", ()), ("bee", "buzz", "buzzes", ()),
    ("frog", "ribbit", "croaks", ("croak",)), ("mouse", "squeak", "squeaks", ()),
    ("donkey", "hee haw", "brays", ("bray", "heehaw")), ("wolf", "howl", "howls", ("awoo",)),
)

# (animal, number of legs)
ANIMAL_LEGS: tuple[tuple[str, int], ...] = (
    ("spider", 8), ("ant", 6), ("bee", 6), ("butterfly", 6), ("dog", 4), ("cat", 4), ("horse", 4), ("cow", 4),
    ("elephant", 4), ("chicken", 2), ("duck", 2), ("ostrich", 2), ("penguin", 2), ("snake", 0),
)

# (animal, young, extra aliases): "What is a baby <animal> called?"
ANIMAL_YOUNG: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("cat", "kitten", ("kitty",)), ("dog", "puppy", ("pup",)), ("cow", "calf", ()), ("sheep", "lamb", ()),
    ("horse", "foal", ("colt", "filly")), ("duck", "duckling", ()), ("frog", "tadpole", ("froglet",)),
    ("goat", "kid", ()), ("kangaroo", "joey", ()), ("bear", "cub", ()), ("deer", "fawn", ()),
    ("swan", "cygnet", ()), ("goose", "gosling", ()), ("pig", "piglet", ()), ("chicken", "chick", ()),
    ("owl", "owlet", ()),
)

# Pairs of opposites; each word appears in one pair only, so "the opposite of X" has one answer.
OPPOSITES: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("up", "down"), ("left", "right"), ("day", "night"), ("fast", "slow"), ("happy", "sad"),
    ("open", "closed"), ("wet", "dry"), ("full", "empty"), ("early", "late"), ("inside", "outside"),
    ("push", "pull"), ("win", "lose"), ("thick", "thin"), ("loud", "quiet"), ("heavy", "light"),
    ("rich", "poor"), ("tall", "short"), ("first", "last"), ("black", "white"), ("north", "south"),
    ("east", "west"), ("top", "bottom"), ("front", "back"), ("always", "never"), ("strong", "weak"),
    ("cheap", "expensive"), ("clean", "dirty"), ("sweet", "sour"), ("true", "false"), ("awake", "asleep"),
    ("buy", "sell"), ("laugh", "cry"), ("big", "small"), ("start", "finish"), ("give", "take"),
)

# (question, canonical answer, extra aliases, statement)
SCIENCE: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("How many days are there in a week?", "seven", ("7",), "There are seven days in a week."),
    ("How many months are there in a year?", "twelve", ("12",), "There are twelve months in a year."),
    ("How many hours are there in a day?", "twenty-four", ("24",), "There are twenty-four hours in a day."),
    ("How many minutes are there in an hour?", "sixty", ("60",), "There are sixty minutes in an hour."),
    ("Which planet do we live on?", "Earth", ("the earth", "planet earth"), "We live on the planet Earth."),
    ("What is the largest planet in our solar system?", "Jupiter", (),
     "Jupiter is the largest planet in our solar system."),
    ("Which planet is known as the red planet?", "Mars", (), "Mars is known as the red planet."),
    ("What is the star at the center of our solar system?", "the Sun", ("sun",),
     "The Sun is the star at the center of our solar system."),
    ("What do bees make?", "honey", (), "Bees make honey."),
    ("Which gas do plants take in from the air?", "carbon dioxide", ("co2",),
     "Plants take in carbon dioxide from the air."),
    ("Which gas do we need to breathe?", "oxygen", (), "We need oxygen to breathe."),
    ("At what temperature in Celsius does water freeze?", "zero degrees", ("zero", "0", "0 degrees"),
     "Water freezes at zero degrees Celsius."),
    ("At what temperature in Celsius does water boil?", "one hundred degrees",
     ("one hundred", "a hundred", "100", "100 degrees"), "Water boils at one hundred degrees Celsius."),
    ("What does a caterpillar turn into?", "a butterfly", ("butterfly", "butterflies", "moth"),
     "A caterpillar turns into a butterfly."),
    ("What is the largest ocean on Earth?", "the Pacific Ocean", ("pacific",),
     "The Pacific Ocean is the largest ocean on Earth."),
    ("What is the tallest animal?", "the giraffe", ("giraffe", "giraffes"), "The giraffe is the tallest animal."),
    ("What is the largest animal on Earth?", "the blue whale", ("blue whale",),
     "The blue whale is the largest animal on Earth."),
    ("How many continents are there?", "seven", ("7",), "There are seven continents."),
    ("What do we call frozen water?", "ice", (), "Frozen water is called ice."),
    ("What force pulls things toward the ground?", "gravity", (), "Gravity pulls things toward the ground."),
    ("What is the hardest natural material?", "diamond", ("diamonds",), "Diamond is the hardest natural material."),
    ("Which organ pumps blood around the body?", "the heart", ("heart",), "The heart pumps blood around the body."),
    ("In which direction does the sun rise?", "east", ("the east",), "The sun rises in the east."),
    ("What is the fastest land animal?", "the cheetah", ("cheetah",), "The cheetah is the fastest land animal."),
    ("How many sides does a triangle have?", "three", ("3",), "A triangle has three sides."),
    ("How many sides does a hexagon have?", "six", ("6",), "A hexagon has six sides."),
    ("What is the name of the Earth's natural satellite?", "the Moon", ("moon",),
     "The Moon is the Earth's natural satellite."),
)

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")

SPELLING_WORDS = (
    "cat", "dog", "sun", "hat", "bed", "cup", "pen", "box", "fish", "bird", "tree", "book", "milk", "rain",
    "star", "moon", "frog", "duck", "cake", "bell", "ball", "door", "hand", "ship", "road", "desk", "lamp",
    "rice", "salt", "boat", "coat", "king", "ring", "nest", "leaf", "rose", "wolf", "bear", "goat", "lion",
    "apple", "house", "green", "water", "bread", "chair", "table", "horse", "happy", "music", "river",
    "clock", "train", "plant", "cloud", "smile", "sheep", "zebra", "tiger", "piano",
)

# The small-vocabulary sentence grammar of the English ASR corpora (textgen.grammar_sentence), in the spirit
# of small-vocabulary speech benchmarks: ~70 words whose combinations give millions of distinct sentences, so
# held-out test sentences are new word sequences made only of words the training sentences use. A tiny
# model trained from scratch for minutes learns to recognise such speech on held-out sentences; with a few
# hundred open-vocabulary sentences it only memorises them. Nouns and adjectives start with a consonant, so
# the article is always "a".
GRAMMAR_DETERMINERS = ("the", "a", "my", "our")
GRAMMAR_ADJECTIVES = ("big", "small", "red", "green", "blue", "brown", "little", "young", "happy", "quiet", "tall",
                      "lazy")
GRAMMAR_AGENTS = ("dog", "cat", "boy", "girl", "man", "woman", "bird", "horse", "farmer", "teacher")
GRAMMAR_THINGS = ("ball", "box", "book", "cup", "hat", "boat", "cake", "coat", "kite", "bag")
GRAMMAR_VERBS = ("saw", "found", "liked", "pushed", "painted", "carried", "washed", "dropped", "kicked", "bought",
                 "lost", "took")
GRAMMAR_PREPOSITIONS = ("in", "on", "near", "under", "behind")
GRAMMAR_PLACES = ("park", "garden", "house", "river", "kitchen", "school")
GRAMMAR_TIMES = ("today", "yesterday", "last night", "this morning", "at noon", "every day")
QUOTES = (
    "Let us go home.", "I will be there soon.", "Please close the door.", "What a lovely day!",
    "Where did you put the keys?", "Thank you very much.", "We are almost there.", "Do not forget the bread.",
)

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a friendly voice assistant. Answer briefly and clearly.",
    "You are a patient tutor who answers questions for young learners.",
    "Answer the user's question in one short sentence.",
)
GREETINGS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hi! What would you like to know?"),
    ("Good morning.", "Good morning! What can I do for you?"),
)
THANKS = (
    ("Thank you.", "You are welcome."),
    ("Thanks a lot!", "Happy to help."),
    ("Great, thanks.", "Any time. Is there anything else?"),
)

# ---- Mandarin (simplified characters) ----
ZH_TIMES = ("今天", "明天", "昨天", "早上", "晚上", "周末", "下午", "中午")
ZH_SUBJECTS = ("我", "你", "他", "她", "我们", "他们", "老师", "妈妈", "爸爸", "小明", "小红", "同学们", "爷爷", "奶奶")
ZH_ACTIVITIES = (
    "去公园散步", "在家里看书", "去超市买菜", "在学校上课", "去图书馆学习", "在厨房做饭", "去医院看病", "在操场跑步",
    "去银行办事", "在客厅看电视", "去朋友家做客", "在花园里种花", "坐公交车去上班", "在网上买东西", "去动物园看熊猫",
    "听音乐", "打篮球", "写作业", "喝咖啡", "吃面条",
)
ZH_FOODS = ("苹果", "香蕉", "米饭", "饺子", "西瓜", "葡萄", "面包", "鸡蛋", "包子", "豆腐")
ZH_CITIES = ("北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安")
ZH_WEATHER = ("很好", "很热", "有点冷", "很晴朗", "多云", "不太好")
ZH_CAPITALS = (
    ("中国", "北京"), ("日本", "东京"), ("法国", "巴黎"), ("英国", "伦敦"), ("德国", "柏林"), ("意大利", "罗马"),
    ("西班牙", "马德里"), ("俄罗斯", "莫斯科"), ("埃及", "开罗"), ("韩国", "首尔"), ("泰国", "曼谷"), ("越南", "河内"),
    ("希腊", "雅典"), ("加拿大", "渥太华"), ("澳大利亚", "堪培拉"),
)
ZH_COLORS = (
    ("天空", "蓝色"), ("草", "绿色"), ("雪", "白色"), ("煤", "黑色"), ("香蕉", "黄色"), ("西红柿", "红色"),
    ("牛奶", "白色"), ("胡萝卜", "橙色"), ("巧克力", "棕色"), ("茄子", "紫色"),
)
