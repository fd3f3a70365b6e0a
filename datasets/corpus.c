/* The story grammar behind corpus.h: word lists (characters with pronouns, animals, toys, places,
 * feelings) and story plans (lost toy, sharing, helping an animal, a wish, the weather, a fear, a warning
 * not heeded, baking, a race), each written as sentence templates with random alternatives. Every plan has
 * a setting, a character who wants something, dialogue, an event, its consequence and an ending, so a
 * small model can learn real regularities: pronouns agree with the character, the wanted object recurs,
 * causes have effects. */
#include "datasets/corpus.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/rng.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------------------------------------ words */

static const char *const girl_names[] = {
    "Lily", "Mia",   "Sue",   "Anna", "Emma", "Lucy", "Zoe",    "Amy",   "Kate",  "Rose", "Ella", "Sara",
    "Jane", "Molly", "Daisy", "Ruby", "Lola", "Nina", "Sophie", "Grace", "Chloe", "Ivy",  "Maya", "Hannah",
};
static const char *const boy_names[] = {
    "Tim",  "Ben",  "Max",    "Sam",  "Tom",   "Jack",  "Leo",   "Finn",  "Joe",  "Bob",  "Dan",  "Jake",
    "Luke", "Noah", "Oliver", "Toby", "Timmy", "Billy", "Sammy", "Peter", "Alex", "Ryan", "Owen", "Eli",
};
static const char *const animals[] = {
    "cat",    "dog",      "bunny",  "bear",     "fox", "mouse", "duck",   "frog",
    "bird",   "puppy",    "kitten", "squirrel", "pig", "owl",   "turtle", "lion",
    "monkey", "elephant", "horse",  "sheep",    "cow", "goat",  "deer",   "hen",
};
/* Things a character can own, lose, share or wish for. */
static const char *const toys[] = {
    "ball",   "kite",  "doll",    "teddy bear", "toy car", "book", "hat",   "box",   "balloon",  "drum",
    "bike",   "boat",  "train",   "blanket",    "shell",   "key",  "cup",   "scarf", "necklace", "truck",
    "puzzle", "robot", "whistle", "bucket",     "crown",   "flag", "wagon", "jar",   "umbrella", "rock",
};
static const char *const colors[] = {"red",    "blue",   "green", "yellow", "pink",
                                     "purple", "orange", "white", "brown",  "gold"};
static const char *const qualities[] = {"big",   "small",   "shiny", "soft",   "pretty", "new",   "old",
                                        "round", "special", "tiny",  "bright", "funny",  "fancy", "little"};
static const char *const foods[] = {"apple", "cookie", "cake",   "banana", "sandwich", "carrot",
                                    "pie",   "muffin", "orange", "pear",   "cupcake",  "peach"};
static const char *const pie_fruits[] = {"apple", "cherry", "peach", "pear", "berry", "pumpkin", "plum"};
static const char *const happy_words[] = {"happy", "glad", "very happy", "so happy", "excited"};
static const char *const sad_words[] = {"sad", "upset", "very sad", "worried", "unhappy"};
static const char *const traits[] = {"kind",  "curious", "brave",  "shy",      "happy",
                                     "funny", "clever",  "gentle", "friendly", "playful"};
static const char *const scary_things[] = {"the dark",       "the big waves",  "the loud thunder",
                                           "the tall slide", "the deep water", "the old barn",
                                           "the big dog",    "the high tree"};
/* Lines said by a character who is stuck. */
static const char *const stuck_spots[] = {"up in a tall tree", "in a deep hole",   "in the thick mud",
                                          "under a heavy log", "in a thorny bush", "on a high rock"};

typedef struct {
    const char *name;      /* "park" */
    const char *activity;  /* "play on the swings" */
    const char *activity2; /* "run on the grass" */
    const char *hide_spot; /* where a lost thing turns up: "under the slide" */
    const char *at;        /* "in the park", "at the beach", "on the farm" */
} place;

static const place places[] = {
    {"park", "play on the swings", "run on the grass", "under the slide", "in the park"},
    {"garden", "pick flowers", "look for bugs", "behind the roses", "in the garden"},
    {"forest", "climb trees", "look for pine cones", "under a big leaf", "in the forest"},
    {"beach", "build a sand castle", "splash in the water", "in the sand", "at the beach"},
    {"farm", "feed the chickens", "ride in the hay", "in the hay", "on the farm"},
    {"river", "throw stones", "watch the fish", "by the water", "by the river"},
    {"lake", "feed the ducks", "sail a little boat", "near the dock", "at the lake"},
    {"hill", "roll down the grass", "look at the clouds", "behind a rock", "on the hill"},
    {"zoo", "see the lions", "watch the monkeys", "near the bench", "at the zoo"},
    {"school", "draw pictures", "sing songs", "under a desk", "at the school"},
    {"library", "read books", "look at pictures", "behind the shelf", "in the library"},
    {"playground", "go down the slide", "play tag", "under the swings", "at the playground"},
    {"meadow", "chase butterflies", "pick daisies", "in the tall grass", "in the meadow"},
    {"pond", "catch frogs", "look at the lily pads", "by the reeds", "at the pond"},
    {"backyard", "play catch", "dig in the dirt", "behind the shed", "in the backyard"},
};

/* ------------------------------------------------------------------------------- story text building */

typedef struct {
    char *buf;
    size_t cap, len;
    int overflow;
    int capitalize_next; /* first letter of a sentence or quote */
    long article_at;     /* position of a pending "a" that becomes "an" before a vowel, or -1 */
} text_builder;

static void put_char(text_builder *t, char c) {
    if (t->article_at >= 0 && isalpha((unsigned char)c)) {
        /* First letter of the word after "{a}": decide between "a" and "an". */
        if (strchr("aeiouAEIOU", c) && t->len + 1 < t->cap) {
            memmove(t->buf + t->article_at + 2, t->buf + t->article_at + 1,
                    t->len - (size_t)t->article_at - 1);
            t->buf[t->article_at + 1] = 'n';
            t->len++;
        }
        t->article_at = -1;
    }
    /* A space after . ! ? starts a new sentence (after a closing quote it does not: "Hi!" he said). */
    if (c == ' ' && t->len > 0 && strchr(".!?", t->buf[t->len - 1])) t->capitalize_next = 1;
    if (t->capitalize_next && isalpha((unsigned char)c)) {
        c = (char)toupper((unsigned char)c);
        t->capitalize_next = 0;
    }
    if (t->len + 1 >= t->cap) {
        t->overflow = 1;
        return;
    }
    t->buf[t->len++] = c;
}

static void put_text(text_builder *t, const char *s) {
    for (; *s; s++)
        put_char(t, *s);
}

/* Slots of one story: the character, a friend, the thing the story turns on, the place. */
typedef struct {
    rng_state *rng;
    text_builder *out;
    const char *name, *he, *him, *his, *himself, *kind;
    const char *friend_name, *fhe, *fhim, *fhis, *fkind;
    const char *parent, *phe, *phis; /* "mom"/"she"/"her" */
    const char *toy, *color, *quality, *animal, *food, *fruit, *trait, *scary, *stuck;
    const place *where;
    const place *where2;
} story;

static const char *pick(rng_state *r, const char *const *list, size_t n) {
    return list[rng_below(r, n)];
}
#define PICK(r, list) pick((r), (list), COUNT(list))

static const char *slot(const story *s, const char *key, size_t n) {
#define KEY(k, v)                                                                                            \
    if (n == sizeof(k) - 1 && !memcmp(key, k, n)) return v
    KEY("name", s->name);
    KEY("he", s->he);
    KEY("him", s->him);
    KEY("his", s->his);
    KEY("himself", s->himself);
    KEY("kind", s->kind);
    KEY("friend", s->friend_name);
    KEY("fhe", s->fhe);
    KEY("fhim", s->fhim);
    KEY("fhis", s->fhis);
    KEY("fkind", s->fkind);
    KEY("parent", s->parent);
    KEY("phe", s->phe);
    KEY("phis", s->phis);
    KEY("toy", s->toy);
    KEY("color", s->color);
    KEY("quality", s->quality);
    KEY("animal", s->animal);
    KEY("food", s->food);
    KEY("fruit", s->fruit);
    KEY("trait", s->trait);
    KEY("scary", s->scary);
    KEY("stuck", s->stuck);
    KEY("place", s->where->name);
    KEY("place2", s->where2->name);
    KEY("activity", s->where->activity);
    KEY("activity2", s->where->activity2);
    KEY("hide", s->where->hide_spot);
    KEY("at_place", s->where->at);
    KEY("happy", PICK(s->rng, happy_words));
    KEY("sad", PICK(s->rng, sad_words));
#undef KEY
    return NULL;
}

/* Expands a template: {key} is a slot, {a} an article agreeing with the next word, [x|y|z] one random
 * alternative (alternatives may hold slots, not brackets), ^ capitalizes the next letter, '\n' starts a
 * new paragraph. */
static void expand(story *s, const char *fmt) {
    text_builder *t = s->out;
    for (const char *p = fmt; *p; p++) {
        if (*p == '{') {
            const char *end = strchr(p, '}');
            size_t n = (size_t)(end - p - 1);
            if (n == 1 && p[1] == 'a') {
                put_char(t, 'a');
                t->article_at = t->len ? (long)t->len - 1 : -1;
            } else {
                const char *v = slot(s, p + 1, n);
                put_text(t, v ? v : "?");
            }
            p = end;
        } else if (*p == '[') {
            /* Count the alternatives, choose one, copy it through a small buffer and expand it. */
            const char *end = strchr(p, ']');
            int n_alt = 1;
            for (const char *q = p + 1; q < end; q++)
                n_alt += *q == '|';
            int chosen = (int)rng_below(s->rng, (uint64_t)n_alt);
            const char *start = p + 1;
            for (int i = 0; i < chosen; i++)
                start = strchr(start, '|') + 1;
            const char *stop = start;
            while (stop < end && *stop != '|')
                stop++;
            char piece[256];
            size_t len =
                (size_t)(stop - start) < sizeof piece - 1 ? (size_t)(stop - start) : sizeof piece - 1;
            memcpy(piece, start, len);
            piece[len] = 0;
            expand(s, piece);
            p = end;
        } else if (*p == '^') {
            t->capitalize_next = 1;
        } else {
            put_char(t, *p);
        }
    }
}

/* One sentence: a space before it unless it starts a paragraph, capitalized. */
static void say(story *s, const char *fmt) {
    text_builder *t = s->out;
    if (t->len > 0 && t->buf[t->len - 1] != '\n') put_char(t, ' ');
    t->capitalize_next = 1;
    expand(s, fmt);
}

static void paragraph(story *s) {
    put_char(s->out, '\n');
}

static int chance(story *s, int percent) {
    return (int)rng_below(s->rng, 100) < percent;
}

/* ------------------------------------------------------------------------------------- story parts */

static void opening(story *s) {
    switch (rng_below(s->rng, 5)) {
    case 0:
        say(s, "Once upon a time, there was {a} [little|young|small] {kind} named {name}.");
        break;
    case 1:
        say(s,
            "Once upon a time, in a [small|quiet|sunny] town, there lived {a} {trait} {kind} named {name}.");
        break;
    case 2:
        say(s, "There was once {a} {trait} {kind} called {name}.");
        break;
    case 3:
        say(s, "{name} was {a} {trait} little {kind}.");
        break;
    default:
        say(s, "Once upon a time, there was {a} {kind}. [^{his} name was {name}.|^{he} was called {name}.]");
    }
    switch (rng_below(s->rng, 4)) {
    case 0:
        say(s, "{he} loved to {activity} {at_place}.");
        break;
    case 1:
        say(s, "Every day, {he} liked to go to the {place} to {activity}.");
        break;
    case 2:
        say(s, "{he} lived near {a} [big|pretty|quiet] {place} and [loved|liked] to {activity2} there.");
        break;
    default:
        say(s, "{his} favorite thing to do was to {activity}.");
    }
}

static void own_toy(story *s) {
    switch (rng_below(s->rng, 3)) {
    case 0:
        say(s, "{he} had {a} {color} {toy} that {he} loved very much.");
        break;
    case 1:
        say(s, "{his} favorite toy was {a} {quality} {color} {toy}.");
        break;
    default:
        say(s, "{name} always took {his} {color} {toy} with {him} everywhere.");
    }
}

static void meet_friend(story *s) {
    switch (rng_below(s->rng, 3)) {
    case 0:
        say(s, "[Soon|Then|Just then], {name} saw {a} {fkind} named {friend}.");
        break;
    case 1:
        say(s,
            "{his} friend {friend}, {a} [little|kind|friendly] {fkind}, came to [play|say hello|see {him}].");
        break;
    default:
        say(s, "{a} {fkind} named {friend} walked up to {name}.");
    }
}

static void moral(story *s, const char *const *lines, size_t n) {
    if (chance(s, 70)) say(s, lines[rng_below(s->rng, n)]);
}

/* ------------------------------------------------------------------------------------- story plans */

static void plan_lost_toy(story *s) {
    opening(s);
    own_toy(s);
    paragraph(s);
    say(s, "[One day|One sunny day|One morning], {name} took {his} {toy} to the {place}.");
    say(s, "{he} [played with it all day|played and played|had lots of fun with it].");
    say(s,
        "[When it was time to go home|Later|After a while], {he} looked for {his} {toy}, but it was gone!");
    say(s, "{name} felt {sad}. \"^Where is my {toy}?\" {he} [cried|asked|said].");
    paragraph(s);
    meet_friend(s);
    say(s, "\"^I will help you find it,\" [said {friend}|{friend} said].");
    say(s, "They looked [everywhere|high and low|all around the {place}].");
    if (chance(s, 50))
        say(s, "They looked behind the trees and under the benches, but they did not see the {toy}.");
    say(s, "[At last|Finally|Then], {friend} found the {color} {toy} {hide}!");
    paragraph(s);
    say(s, "{name} was {happy}. \"^Thank you, {friend}!\" {he} said, and gave {fhim} a big hug.");
    if (chance(s, 50)) say(s, "From that day on, {name} and {friend} were best friends.");
    static const char *const morals[] = {
        "{name} learned that friends help each other.",
        "{he} was careful to keep {his} {toy} close after that.",
        "It was the best day ever.",
    };
    moral(s, morals, COUNT(morals));
}

static void plan_sharing(story *s) {
    opening(s);
    own_toy(s);
    paragraph(s);
    say(s, "One day, {name} was playing with {his} {toy} {at_place}.");
    meet_friend(s);
    say(s, "\"^Can I play with your {toy}?\" {friend} asked.");
    if (chance(s, 60)) {
        say(s, "\"^No, it is mine!\" said {name}. {friend} felt {sad} and walked away.");
        paragraph(s);
        say(s, "{name} played alone, but it was not fun anymore.");
        say(s, "{he} [thought about|remembered] {friend}'s [sad face|face] and felt bad.");
        say(s, "{he} ran to {friend} and said, \"^I am sorry. Let's play with my {toy} together.\"");
        say(s, "{friend} smiled, and they played with the {toy} all day.");
        static const char *const morals[] = {
            "{name} learned that sharing is caring.",
            "Playing together was much more fun than playing alone.",
            "{name} felt [happy|warm] inside because {he} had shared.",
        };
        moral(s, morals, COUNT(morals));
    } else {
        say(s, "\"^Yes, let's play together!\" said {name}.");
        paragraph(s);
        say(s, "They took turns with the {toy}. {friend} [laughed|smiled] and {name} [laughed|smiled] too.");
        say(s, "When it was time to go home, {friend} said, \"^Thank you for sharing, {name}.\"");
        static const char *const morals[] = {
            "{name} was {happy} that {he} had made a new friend.",
            "Sharing made both of them {happy}.",
        };
        moral(s, morals, COUNT(morals));
    }
}

static void plan_help_animal(story *s) {
    opening(s);
    paragraph(s);
    say(s, "[One day|One afternoon|One morning], {name} went to the {place} to {activity}.");
    say(s, "{he} heard a [small|little|soft] sound. It was {a} {animal} {stuck}!");
    say(s, "\"^Help! Help!\" cried the {animal}. \"^I cannot get out!\"");
    say(s, "{name} felt [sorry for the {animal}|{sad} for the {animal}]. \"^Don't worry, I will help you,\" "
           "{he} said.");
    paragraph(s);
    switch (rng_below(s->rng, 3)) {
    case 0:
        say(s, "{he} [thought hard|looked around] and found a long stick. {he} used the stick to help the "
               "{animal}.");
        break;
    case 1:
        say(s, "{he} ran to get {his} {parent}. {his} {parent} came and helped the {animal} out.");
        break;
    default:
        say(s, "{he} pulled and pulled, and at last the {animal} was free.");
    }
    say(s, "The {animal} was {happy}. \"^Thank you, {name}! You are very kind,\" said the {animal}.");
    if (chance(s, 50))
        say(s, "The {animal} gave {name} {a} {food} to say thank you.");
    else
        say(s, "The {animal} and {name} played {at_place} until the sun went down.");
    static const char *const morals[] = {
        "{name} felt proud that {he} had helped.",
        "From then on, the {animal} came to visit {name} every day.",
        "{name} learned that it is good to help others.",
    };
    moral(s, morals, COUNT(morals));
}

static void plan_wish(story *s) {
    opening(s);
    paragraph(s);
    say(s, "One day, {name} [saw|found] {a} {quality} {color} {toy} in a shop window.");
    say(s, "{he} wanted it very much. \"^Can I have the {toy}, please?\" {he} asked {his} {parent}.");
    say(s, "{his} {parent} said, \"^Not today. [We have to wait|It costs too much money|Maybe for your "
           "birthday].\"");
    say(s, "{name} felt {sad}, but {he} did not cry.");
    paragraph(s);
    switch (rng_below(s->rng, 2)) {
    case 0:
        say(s, "{name} helped {his} {parent} every day. {he} [cleaned {his} room|washed the cups|fed the "
               "{animal}|picked up {his} toys].");
        say(s, "[After many days|One week later|Soon], {his} {parent} gave {him} a box. Inside was the "
               "{color} {toy}!");
        break;
    default:
        say(s, "{name} had an idea. {he} made {his} own {toy} with paper, glue and {a} {color} string.");
        say(s, "It was not shiny, but {he} loved it. When {his} {parent} saw it, {phe} smiled.");
    }
    say(s, "\"^Thank you!\" said {name}. {he} was {happy}.");
    static const char *const morals[] = {
        "{name} learned that good things come to those who wait.",
        "{he} played with {his} {toy} every day after that.",
        "It was the best {toy} in the whole world.",
    };
    moral(s, morals, COUNT(morals));
}

static void plan_weather(story *s) {
    opening(s);
    paragraph(s);
    say(s, "One day, {name} and {his} friend {friend} went to the {place} to {activity2}.");
    switch (rng_below(s->rng, 3)) {
    case 0:
        say(s, "Suddenly, the sky turned dark and it started to rain.");
        say(s, "\"^Oh no! We are getting wet!\" said {friend}.");
        say(s, "They ran home as fast as they could. [They were wet from head to toe.|Their shoes were full "
               "of water.]");
        paragraph(s);
        say(s, "{name}'s {parent} gave them warm towels and hot milk. Soon they were dry and warm.");
        say(s, "They sat by the window and watched the rain.");
        break;
    case 1:
        say(s, "It was a very windy day. The wind blew so hard that {name}'s hat flew away!");
        say(s, "\"^Come back, hat!\" {name} shouted. {he} and {friend} ran after it.");
        say(s, "The hat landed in the {place2}. {friend} picked it up and gave it back.");
        paragraph(s);
        say(s, "\"^Thank you, {friend},\" said {name}. Then they flew {name}'s kite high in the windy sky.");
        break;
    default:
        say(s, "The sun was very hot. {name} and {friend} were hot and thirsty.");
        say(s, "\"^Let's get some cold water,\" said {name}.");
        say(s, "They drank cold water and sat in the shade of a big tree.");
        paragraph(s);
        say(s, "Soon they felt better, and they played {at_place} again.");
    }
    static const char *const morals[] = {
        "It was a fun day after all.",
        "{name} and {friend} were {happy} to be together.",
        "When the day was over, {name} went to bed with a smile.",
    };
    moral(s, morals, COUNT(morals));
}

static void plan_fear(story *s) {
    opening(s);
    paragraph(s);
    say(s, "But {name} was scared of {scary}.");
    say(s, "When {he} [saw|thought about] {scary}, {he} wanted to run away.");
    say(s, "One day, {his} friend {friend} said, \"^Don't be scared, {name}. I will be with you.\"");
    paragraph(s);
    say(s, "{name} held {friend}'s hand and took a deep breath.");
    say(s, "{he} [was brave|tried very hard] and went close to {scary}.");
    say(s, "It was not so scary after all! {name} [laughed|smiled|cheered].");
    say(s, "\"^I did it!\" {he} said. {he} felt proud of {himself}.");
    static const char *const morals[] = {
        "{name} learned that being brave is easier with a friend.",
        "From that day on, {name} was not scared anymore.",
        "{friend} was proud of {name} too.",
    };
    moral(s, morals, COUNT(morals));
}

static void plan_warning(story *s) {
    opening(s);
    own_toy(s);
    paragraph(s);
    say(s,
        "One day, {name}'s {parent} said, \"^Do not take your {toy} near the {place2}. It might get lost.\"");
    say(s, "But {name} did not listen. {he} took {his} {toy} to the {place2} anyway.");
    switch (rng_below(s->rng, 2)) {
    case 0:
        say(s, "{he} [played|ran] too fast and {his} {toy} fell and broke.");
        say(s, "{name} started to cry. \"^My {toy} is broken!\"");
        paragraph(s);
        say(s, "{his} {parent} heard {him} and came to help. {phe} fixed the {toy} with some glue.");
        break;
    default:
        say(s, "{he} put the {toy} down to {activity}, and when {he} looked back, it was gone!");
        say(s, "{name} was scared and {sad}. {he} ran home to {his} {parent}.");
        paragraph(s);
        say(s, "{his} {parent} went with {him} to the {place2}, and together they found the {toy}.");
    }
    say(s, "\"^I am sorry I did not listen,\" said {name}. {his} {parent} gave {him} a hug.");
    static const char *const morals[] = {
        "{name} learned to listen to {his} {parent}.",
        "After that, {name} always listened.",
    };
    moral(s, morals, COUNT(morals));
}

static void plan_baking(story *s) {
    opening(s);
    paragraph(s);
    say(s, "One day, {name} wanted to make {a} {fruit} pie with {his} {parent}.");
    say(s, "\"^Can I help you bake, please?\" {he} asked. {his} {parent} smiled and said, \"^Yes, you can "
           "help me.\"");
    say(s, "They put flour, eggs and milk in a big bowl. {name} stirred and stirred.");
    paragraph(s);
    switch (rng_below(s->rng, 3)) {
    case 0:
        say(s, "When the pie came out of the oven, {name} wanted to eat it right away.");
        say(s, "\"^Wait, it is too hot!\" said {his} {parent}. But {name} took a bite anyway and burned "
               "{his} tongue.");
        say(s, "\"^Ouch!\" {he} cried. {his} {parent} gave {him} some cold water.");
        say(s, "After a while the pie was cool, and it tasted very good.");
        break;
    case 1:
        say(s, "But {name} forgot to put in the sugar! When they tasted the pie, it was not sweet at all.");
        say(s, "{name} felt {sad}. \"^It's okay,\" said {his} {parent}. \"^We can make another one.\"");
        say(s, "This time {name} remembered the sugar, and the pie was sweet and yummy.");
        break;
    default:
        say(s, "The kitchen smelled so good that {his} friend {friend} came to see.");
        say(s, "\"^What are you making?\" asked {friend}. \"^{a} {fruit} pie! You can have some too,\" said "
               "{name}.");
        say(s, "They ate the warm pie together, and {friend} said it was the best pie ever.");
    }
    static const char *const morals[] = {
        "{name} learned that good things take time.",
        "{name} was proud that {he} had helped.",
        "From then on, {name} helped in the kitchen every week.",
    };
    moral(s, morals, COUNT(morals));
}

static void plan_race(story *s) {
    opening(s);
    paragraph(s);
    say(s, "One day, {name} and {friend} had a race {at_place}.");
    say(s, "\"^I am the fastest!\" said {name}. \"^No, I am!\" said {friend}.");
    say(s, "They ran and ran. {name} was in front, but then {he} tripped on a rock and fell down.");
    say(s, "{he} hurt {his} knee and began to cry.");
    paragraph(s);
    say(s, "{friend} stopped running and came back to help. \"^Are you okay?\" {fhe} asked.");
    say(s, "{friend} helped {name} stand up, and they walked to the finish together.");
    if (chance(s, 50)) say(s, "{name}'s {parent} put a bandage on {his} knee, and soon it felt better.");
    say(s, "\"^Thank you, {friend},\" said {name}. \"^You are a good friend.\"");
    static const char *const morals[] = {
        "{name} learned that being kind is more important than winning.",
        "They did not care who won. They were {happy} to be friends.",
    };
    moral(s, morals, COUNT(morals));
}

typedef void (*story_plan)(story *);
static const story_plan plans[] = {plan_lost_toy, plan_sharing, plan_help_animal, plan_wish, plan_weather,
                                   plan_fear,     plan_warning, plan_baking,      plan_race};

/* Picks a character: a girl, a boy, or an animal with a name; fills name/pronouns/kind. */
static void pick_character(rng_state *r, const char **name, const char **kind, int *female) {
    *female = (int)rng_below(r, 2);
    *name = *female ? PICK(r, girl_names) : PICK(r, boy_names);
    if (rng_below(r, 3) == 0)
        *kind = PICK(r, animals);
    else
        *kind = *female ? "girl" : "boy";
}

static void write_story(rng_state *r, text_builder *t) {
    story s;
    memset(&s, 0, sizeof s);
    s.rng = r;
    s.out = t;
    int female, friend_female;
    pick_character(r, &s.name, &s.kind, &female);
    do
        pick_character(r, &s.friend_name, &s.fkind, &friend_female);
    while (!strcmp(s.friend_name, s.name));
    s.he = female ? "she" : "he";
    s.him = female ? "her" : "him";
    s.his = female ? "her" : "his";
    s.himself = female ? "herself" : "himself";
    s.fhe = friend_female ? "she" : "he";
    s.fhim = friend_female ? "her" : "him";
    s.fhis = friend_female ? "her" : "his";
    int mom = (int)rng_below(r, 2);
    s.parent = mom ? "mom" : "dad";
    s.phe = mom ? "she" : "he";
    s.phis = mom ? "her" : "his";
    s.toy = PICK(r, toys);
    s.color = PICK(r, colors);
    s.quality = PICK(r, qualities);
    s.animal = PICK(r, animals);
    s.food = PICK(r, foods);
    s.fruit = PICK(r, pie_fruits);
    s.trait = PICK(r, traits);
    s.scary = PICK(r, scary_things);
    s.stuck = PICK(r, stuck_spots);
    s.where = &places[rng_below(r, COUNT(places))];
    do
        s.where2 = &places[rng_below(r, COUNT(places))];
    while (s.where2 == s.where);
    plans[rng_below(r, COUNT(plans))](&s);
    put_char(t, '\n');
}

/* ------------------------------------------------------------------------------------------ streams */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t corpus_text_hash(const char *text, size_t len) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)text[i]) * 0x100000001b3ULL;
    return h;
}

const char *corpus_split_name(corpus_split split) {
    return split == CORPUS_HELDOUT ? "heldout" : "train";
}

void corpus_begin(corpus_generator *g, uint64_t seed, corpus_split split) {
    g->seed = seed;
    g->split = split;
    g->next_candidate = 0;
    g->stories_emitted = 0;
}

size_t corpus_next_story(corpus_generator *g, char *buf, size_t cap) {
    for (;;) {
        uint64_t k = g->next_candidate++;
        /* Each candidate has its own RNG stream, so story k can be produced without the ones before it. */
        rng_state r;
        rng_seed(&r, mix64(mix64(g->seed ^ (0x5851f42d4c957f2dULL * ((uint64_t)g->split + 1))) + k));
        text_builder t = {buf, cap, 0, 0, 0, -1};
        write_story(&r, &t);
        if (t.overflow) {
            qlab_fail(QLAB_ERR_ARG, "corpus: story buffer of %zu bytes is too small (use %d)", cap,
                      CORPUS_MAX_STORY_BYTES);
            return 0;
        }
        buf[t.len] = 0;
        int heldout = corpus_text_hash(buf, t.len) % CORPUS_HELDOUT_MODULUS == 0;
        if (heldout == (g->split == CORPUS_HELDOUT)) {
            g->stories_emitted++;
            return t.len;
        }
    }
}

/* Shared loop of corpus_generate / corpus_write: emit(ctx, bytes, n) appends or writes. */
static qlab_status generate(uint64_t seed, corpus_split split, size_t n_bytes, size_t n_stories,
                            qlab_status (*emit)(void *, const char *, size_t), void *ctx) {
    if (split != CORPUS_TRAIN && split != CORPUS_HELDOUT)
        return qlab_fail(QLAB_ERR_ARG, "corpus: unknown split %d", (int)split);
    if (n_bytes == 0 && n_stories == 0)
        return qlab_fail(QLAB_ERR_ARG, "corpus: give a byte count or a story count (both are 0)");
    corpus_generator g;
    corpus_begin(&g, seed, split);
    char story_text[CORPUS_MAX_STORY_BYTES];
    size_t written = 0;
    for (size_t i = 0; (n_stories == 0 || i < n_stories) && (n_bytes == 0 || written < n_bytes); i++) {
        size_t len = corpus_next_story(&g, story_text, sizeof story_text);
        if (len == 0) return QLAB_ERR_ARG;
        if (i > 0) {
            QLAB_TRY(emit(ctx, "\n", 1));
            written++;
        }
        QLAB_TRY(emit(ctx, story_text, len));
        written += len;
    }
    return QLAB_OK;
}

typedef struct {
    char *data;
    size_t len, cap;
} growing_buffer;

static qlab_status append_buffer(void *ctx, const char *bytes, size_t n) {
    growing_buffer *b = ctx;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) return qlab_fail(QLAB_ERR_NOMEM, "corpus: text too large");
            cap *= 2;
        }
        char *p = realloc(b->data, cap);
        if (!p) return qlab_fail(QLAB_ERR_NOMEM, "corpus: out of memory (%zu bytes)", cap);
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = 0;
    return QLAB_OK;
}

qlab_status corpus_generate(uint64_t seed, corpus_split split, size_t n_bytes, size_t n_stories, char **text,
                            size_t *len) {
    *text = NULL;
    *len = 0;
    growing_buffer b = {NULL, 0, 0};
    if (n_bytes > 0 && n_bytes < SIZE_MAX - CORPUS_MAX_STORY_BYTES) {
        /* Reserve the whole output at once: the loop then never reallocates. */
        b.data = malloc(n_bytes + CORPUS_MAX_STORY_BYTES + 2);
        if (!b.data) return qlab_fail(QLAB_ERR_NOMEM, "corpus: out of memory (%zu bytes)", n_bytes);
        b.cap = n_bytes + CORPUS_MAX_STORY_BYTES + 2;
    }
    qlab_status st = generate(seed, split, n_bytes, n_stories, append_buffer, &b);
    if (st != QLAB_OK) {
        free(b.data);
        return st;
    }
    if (!b.data) QLAB_TRY(append_buffer(&b, "", 0));
    *text = b.data;
    *len = b.len;
    return QLAB_OK;
}

typedef struct {
    FILE *f;
    const char *name;
} file_sink;

static qlab_status write_file(void *ctx, const char *bytes, size_t n) {
    file_sink *s = ctx;
    if (fwrite(bytes, 1, n, s->f) != n) return qlab_fail(QLAB_ERR_IO, "%s: write failed", s->name);
    return QLAB_OK;
}

qlab_status corpus_write(uint64_t seed, corpus_split split, size_t n_bytes, size_t n_stories, FILE *f,
                         const char *name) {
    file_sink s = {f, name ? name : "output"};
    return generate(seed, split, n_bytes, n_stories, write_file, &s);
}
