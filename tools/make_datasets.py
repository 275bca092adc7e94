"""Deterministic generator of the bundled corpus and chat datasets.

Run `python -m tools.make_datasets` to rewrite, under ``services/common/assets/``,

- ``corpus/*.txt``                 the bilingual text the tiny tokenizer is trained on,
- ``datasets/bilingual_chat.jsonl`` >= 300 Chinese/English conversations, single- and
  multi-turn, some with a system message, most short with a long tail of long ones,
- ``datasets/qa_facts.jsonl``       a few invented question -> answer facts that training
  tests use to check that a model really learns (they are kept out of the corpus),
- ``datasets/preference_pairs.jsonl`` ~400 Chinese/English preference pairs (TRL's
  conversational prompt / chosen / rejected rows): a house style (the concise, correct answer
  opened by "In short: ") preferred over the unstyled, a rambling or a wrong answer.

All text is original. The output is a pure function of this file (fixed seeds), and the
generated files are committed, so nothing here runs at build or test time.
"""

from __future__ import annotations

import json
import re
import random
from dataclasses import dataclass
from pathlib import Path

from services.common.fsutil import atomic_write_text

ASSETS = Path(__file__).resolve().parents[1] / "services" / "common" / "assets"
SEED = 20240521
N_CONVERSATIONS = 360


@dataclass(frozen=True)
class Topic:
    zh_q: tuple[str, ...]
    zh_a: str
    zh_more: tuple[str, ...]
    zh_follow: tuple[str, str]
    en_q: tuple[str, ...]
    en_a: str
    en_more: tuple[str, ...]
    en_follow: tuple[str, str]


TOPICS: tuple[Topic, ...] = (
    Topic(
        zh_q=("介绍一下Python", "Python是什么？", "能简单说说Python这门语言吗？"),
        zh_a="Python是一种高级编程语言，语法简洁易读，非常适合初学者入门。",
        zh_more=(
            "它由吉多·范罗苏姆在九十年代初设计，名字来自一部英国喜剧节目。",
            "Python用缩进来表示代码块，所以写出来的程序通常很整齐。",
            "它拥有庞大的标准库，处理文件、网络和文本都不需要额外安装什么。",
            "在数据分析、网站开发、自动化脚本和人工智能领域，Python都很常见。",
            "缺点是运行速度比C语言慢，但大多数场景下这点差距并不重要。",
            "如果你刚开始学，可以先装好解释器，然后在交互环境里多试几行代码。",
        ),
        zh_follow=("Python适合做什么项目？", "可以从小工具做起，比如批量重命名文件、整理表格，或者写一个简单的爬虫。"),
        en_q=("Tell me about Python.", "What is Python?", "Can you give me a quick overview of the Python language?"),
        en_a="Python is a high-level programming language known for its clean, readable syntax.",
        en_more=(
            "It was created by Guido van Rossum and first released in 1991.",
            "Blocks of code are marked by indentation, which keeps programs tidy by design.",
            "The standard library is large, so reading files, talking to the network and parsing text work out of the box.",
            "Python is popular in data science, web development, automation and machine learning.",
            "It is slower than compiled languages like C, but for most tasks that difference hardly matters.",
            "A good way to start is to open the interactive shell and try a few lines at a time.",
        ),
        en_follow=("What kind of projects is it good for?", "Start small: a script that renames files, cleans up a spreadsheet, or fetches a web page is a great first project."),
    ),
    Topic(
        zh_q=("什么是机器学习？", "机器学习是什么意思", "用通俗的话解释一下机器学习"),
        zh_a="机器学习是人工智能的一个分支，让计算机从数据中总结规律，并用这些规律做出预测。",
        zh_more=(
            "传统程序是人把规则写好，机器学习则是让程序自己从例子里学到规则。",
            "常见的类型有监督学习、无监督学习和强化学习。",
            "监督学习需要带标签的数据，比如一堆标好“猫”或“狗”的图片。",
            "训练好的模型要在没见过的数据上测试，才能知道它是否真的学会了。",
            "数据的质量往往比算法本身更重要，垃圾进，垃圾出。",
        ),
        zh_follow=("能举个生活中的例子吗？", "邮箱里的垃圾邮件过滤就是一个例子：它看过大量被标记的邮件，学会了识别广告和诈骗信息。"),
        en_q=("What is machine learning?", "Explain machine learning in simple terms.", "How would you define machine learning?"),
        en_a="Machine learning is a branch of AI where computers learn patterns from data instead of following hand-written rules.",
        en_more=(
            "You show the system many examples, and it adjusts itself until its predictions match them.",
            "The main families are supervised, unsupervised and reinforcement learning.",
            "Supervised learning needs labelled data, such as photos tagged as cats or dogs.",
            "A model must be tested on data it has never seen, otherwise you cannot tell whether it learned or just memorised.",
            "In practice, clean and representative data matters more than a clever algorithm.",
        ),
        en_follow=("Can you give an everyday example?", "Your email spam filter is one: it has seen millions of labelled messages and learned what junk mail tends to look like."),
    ),
    Topic(
        zh_q=("深度学习是什么？", "深度学习和机器学习有什么区别？", "给我讲讲深度学习"),
        zh_a="深度学习是机器学习的一个子集，使用多层神经网络从原始数据中自动提取特征。",
        zh_more=(
            "“深度”指的是网络有很多层，每一层都在上一层的基础上学习更抽象的表示。",
            "它在图像识别、语音识别和机器翻译上取得了突破性的进展。",
            "深度学习通常需要大量数据和较强的算力，显卡在训练中起了关键作用。",
            "和传统方法相比，它不太依赖人工设计特征，但可解释性较差。",
            "现在的大语言模型也是深度学习的产物，本质上是一个非常大的神经网络。",
        ),
        zh_follow=("学深度学习需要什么基础？", "最好先掌握线性代数、概率和一点微积分，再熟悉Python和一个框架，比如PyTorch。"),
        en_q=("What is deep learning?", "How is deep learning different from machine learning?", "Give me a short intro to deep learning."),
        en_a="Deep learning is a kind of machine learning that uses neural networks with many layers to learn features directly from raw data.",
        en_more=(
            "Each layer builds on the one before it, so later layers capture more abstract ideas.",
            "It drove big leaps in image recognition, speech recognition and translation.",
            "Training usually needs a lot of data and plenty of compute, which is why GPUs became so important.",
            "It needs less hand-crafted feature engineering, but its decisions are harder to explain.",
            "Today's large language models are deep learning models too, just very large ones.",
        ),
        en_follow=("What should I learn first?", "Linear algebra, basic probability and a little calculus, then Python and a framework such as PyTorch."),
    ),
    Topic(
        zh_q=("如何学习编程？", "零基础怎么学编程", "我想学编程，应该从哪里开始？"),
        zh_a="建议从一门入门友好的语言开始，先学基础语法，再通过小项目不断练习。",
        zh_more=(
            "每天固定抽出一段时间，比一周突击一次效果好得多。",
            "看懂别人的代码和自己写出来是两回事，一定要亲手敲。",
            "遇到报错不要慌，仔细读错误信息，大部分问题答案就在里面。",
            "学会用搜索引擎和官方文档，是程序员最重要的技能之一。",
            "做一个自己真正想用的小工具，会让你更有动力坚持下去。",
            "可以加入学习小组或者开源社区，和别人交流进步更快。",
        ),
        zh_follow=("每天学多久合适？", "刚开始每天一个小时就够了，关键是坚持，连续几个月下来会有明显进步。"),
        en_q=("How do I learn to code?", "I want to start programming. Where should I begin?", "What's the best way to learn programming from scratch?"),
        en_a="Pick one beginner-friendly language, learn the basics, and then practise by building small projects.",
        en_more=(
            "A little every day beats a long session once a week.",
            "Reading code is not the same as writing it, so type the examples yourself.",
            "When you see an error, read the message slowly; it usually tells you what went wrong.",
            "Learning to search well and to read official documentation is a core skill.",
            "Building a tool you actually want to use keeps you motivated.",
            "Join a study group or an open-source community to get feedback on your work.",
        ),
        en_follow=("How much time should I spend each day?", "An hour a day is plenty at the start. Consistency over a few months matters far more than intensity."),
    ),
    Topic(
        zh_q=("怎样才能睡个好觉？", "晚上总是失眠怎么办", "有什么改善睡眠的方法？"),
        zh_a="保持规律的作息，睡前一小时远离手机，卧室保持安静、黑暗和凉爽。",
        zh_more=(
            "每天尽量在同一时间起床，周末也不要相差太多。",
            "下午三点以后少喝咖啡和浓茶，咖啡因的作用可以持续好几个小时。",
            "白天适当运动有助于入睡，但睡前两小时内不宜剧烈运动。",
            "如果躺下二十分钟还睡不着，可以起来做点安静的事情，有困意再回床上。",
            "长期严重失眠最好去看医生，不要自己随便吃安眠药。",
        ),
        zh_follow=("午睡会影响晚上睡觉吗？", "午睡控制在二十到三十分钟一般没问题，睡太久反而可能让晚上更难入睡。"),
        en_q=("How can I sleep better?", "I keep waking up at night. Any tips?", "What helps with insomnia?"),
        en_a="Keep a regular schedule, put your phone away an hour before bed, and keep the bedroom dark, quiet and cool.",
        en_more=(
            "Try to wake up at the same time every day, weekends included.",
            "Avoid coffee after mid-afternoon; caffeine stays in your body for hours.",
            "Exercise during the day helps, but a hard workout right before bed can keep you awake.",
            "If you cannot fall asleep within twenty minutes, get up and do something calm until you feel sleepy.",
            "If poor sleep lasts for weeks, talk to a doctor rather than guessing at remedies.",
        ),
        en_follow=("Are naps a bad idea?", "A short nap of twenty to thirty minutes is usually fine. Long naps late in the day can make it harder to sleep at night."),
    ),
    Topic(
        zh_q=("番茄炒蛋怎么做？", "教我做番茄炒鸡蛋", "西红柿炒蛋的做法是什么？"),
        zh_a="先把鸡蛋炒到半熟盛出，再炒番茄出汁，最后把鸡蛋倒回去一起翻炒，加盐调味即可。",
        zh_more=(
            "番茄最好选熟透的，切成小块，炒的时候更容易出汁。",
            "打鸡蛋时加一点点水或料酒，炒出来会更蓬松。",
            "油要热一些再下蛋液，鸡蛋一凝固就盛出来，不要炒老了。",
            "喜欢酸甜口的可以加半勺糖，能中和番茄的酸味。",
            "出锅前撒一点葱花，颜色和香味都会更好。",
        ),
        zh_follow=("要不要给番茄去皮？", "不去皮也可以。如果想口感更细腻，可以在番茄顶部划十字，用开水烫一下，皮就很容易剥掉。"),
        en_q=("How do I make tomato and egg stir-fry?", "Can you teach me a simple tomato egg recipe?", "What's the recipe for Chinese scrambled eggs with tomato?"),
        en_a="Scramble the eggs until just set and take them out, cook the tomatoes until juicy, then return the eggs, stir and season with salt.",
        en_more=(
            "Ripe tomatoes work best; cut them into small wedges so they release their juice.",
            "A splash of water in the beaten eggs makes them fluffier.",
            "Heat the oil well before pouring in the eggs, and take them out while they are still soft.",
            "A pinch of sugar balances the acidity of the tomatoes.",
            "Finish with chopped spring onion for colour and aroma.",
        ),
        en_follow=("Should I peel the tomatoes?", "You don't have to. For a smoother texture, score a cross on top, dip them in boiling water for a minute, and the skin slips right off."),
    ),
    Topic(
        zh_q=("第一次出国旅行要准备什么？", "出国旅游需要注意什么", "帮我列一下出国旅行的准备事项"),
        zh_a="护照和签证最重要，其次是机票、住宿、保险，以及当地的货币和电话卡。",
        zh_more=(
            "出发前确认护照有效期至少还有六个月，很多国家有这个要求。",
            "把证件拍照存一份在手机和邮箱里，丢失时补办会方便很多。",
            "买一份旅行保险，覆盖医疗和行程延误，花钱不多但很安心。",
            "提前查好目的地的插座标准，带一个合适的转换插头。",
            "了解当地的风俗和禁忌，尊重别人的习惯，旅途会更顺利。",
            "行李不要带太满，留一点空间装纪念品。",
        ),
        zh_follow=("现金需要带多少？", "现在很多地方可以刷卡，带少量当地现金应急即可，比如够两三天的交通和吃饭。"),
        en_q=("What should I prepare for my first trip abroad?", "Any advice for travelling overseas for the first time?", "Can you make a checklist for an international trip?"),
        en_a="Passport and visa come first, then flights, accommodation, travel insurance, some local currency and a way to use your phone.",
        en_more=(
            "Check that your passport is valid for at least six months after you arrive; many countries require it.",
            "Keep photos of your documents in your phone and email in case anything gets lost.",
            "Travel insurance that covers medical costs and delays is cheap peace of mind.",
            "Look up the plug type at your destination and pack an adapter.",
            "Read a little about local customs so you don't offend anyone by accident.",
            "Leave some room in your suitcase for things you buy on the way.",
        ),
        en_follow=("How much cash should I carry?", "Cards work almost everywhere now. A small amount of local cash for two or three days of transport and meals is usually enough."),
    ),
    Topic(
        zh_q=("怎么管理时间？", "总是拖延怎么办？", "有什么提高效率的方法吗"),
        zh_a="先列出当天最重要的三件事，优先完成它们，再处理零碎的小任务。",
        zh_more=(
            "把大任务拆成半小时能完成的小步骤，开始就不会那么难。",
            "番茄工作法很简单：专注二十五分钟，休息五分钟。",
            "工作时把手机放远一点，关掉不必要的通知。",
            "每天晚上花五分钟回顾一下，明天就知道从哪里开始。",
            "别追求完美的计划，先动起来，边做边调整。",
        ),
        zh_follow=("番茄工作法真的有用吗？", "对很多人有用，因为它让开始变得容易。你可以试一周，看看自己的专注时间有没有变长。"),
        en_q=("How can I manage my time better?", "I procrastinate a lot. What can I do?", "Any productivity tips?"),
        en_a="Write down the three most important tasks for the day and finish those before touching the small stuff.",
        en_more=(
            "Break big tasks into steps that take about thirty minutes, so starting feels easy.",
            "The Pomodoro technique is simple: focus for twenty-five minutes, then rest for five.",
            "Put your phone in another room and turn off notifications you don't need.",
            "Spend five minutes each evening reviewing the day so tomorrow has a clear starting point.",
            "Don't wait for the perfect plan; start, then adjust as you go.",
        ),
        en_follow=("Does the Pomodoro technique really work?", "For many people it does, mostly because it makes starting easier. Try it for a week and see whether your focus improves."),
    ),
    Topic(
        zh_q=("怎么开始健身？", "新手应该怎么锻炼身体", "我想运动减肥，有什么建议？"),
        zh_a="从每周三次、每次三十分钟的中等强度运动开始，比如快走、慢跑或骑车，再慢慢加量。",
        zh_more=(
            "运动前热身五到十分钟，运动后拉伸，可以减少受伤。",
            "力量训练和有氧运动结合，效果比只做一种更好。",
            "减肥主要靠饮食控制，运动是辅助，两者要一起做。",
            "不要一开始就练得太狠，身体需要时间适应。",
            "记录每次的运动内容，看到进步会更有动力。",
        ),
        zh_follow=("每天都要练吗？", "不需要。肌肉在休息时恢复和生长，新手每周三到四次、中间安排休息日就很好。"),
        en_q=("How do I start working out?", "What exercise routine is good for a beginner?", "I want to get fit. Where do I start?"),
        en_a="Start with about thirty minutes of moderate exercise three times a week, like brisk walking, jogging or cycling, and build up slowly.",
        en_more=(
            "Warm up for five to ten minutes first and stretch afterwards to avoid injuries.",
            "Mixing strength training with cardio works better than doing only one of them.",
            "If weight loss is the goal, diet matters most; exercise helps but cannot outrun a bad diet.",
            "Don't go too hard in the first weeks; your body needs time to adapt.",
            "Keep a simple log of your workouts so you can see your progress.",
        ),
        en_follow=("Should I train every day?", "No need. Muscles recover and grow on rest days, so three or four sessions a week is a great start."),
    ),
    Topic(
        zh_q=("怎么提高英语口语？", "英语口语不好怎么练", "有什么练英语口语的好办法"),
        zh_a="多听多说，每天模仿一段地道的录音，并且找机会和别人用英语交流。",
        zh_more=(
            "跟读是很有效的方法：听一句，停下来，尽量模仿语音语调。",
            "不要怕犯错，能把意思说清楚比语法完美更重要。",
            "可以用英语自言自语，描述自己正在做的事情。",
            "把自己说的话录下来回听，能发现很多平时注意不到的问题。",
            "积累常用的句型和搭配，比单独背单词更实用。",
        ),
        zh_follow=("没有外国朋友怎么办？", "可以参加线上语言交换，或者和同样在学英语的朋友约定固定时间只用英语聊天。"),
        en_q=("How can I improve my spoken Chinese?", "What's a good way to practise speaking Mandarin?", "My Chinese speaking is weak. Any advice?"),
        en_a="Listen a lot, copy native speakers out loud every day, and look for chances to actually talk with people.",
        en_more=(
            "Shadowing works well: play a sentence, pause, and repeat it with the same tones and rhythm.",
            "Pay special attention to tones early on; they are much harder to fix later.",
            "Don't be afraid of mistakes; being understood matters more than perfect grammar.",
            "Record yourself and listen back, you will notice things you miss while speaking.",
            "Learn whole phrases, not just single words, so you can use them right away.",
        ),
        en_follow=("What if I have no one to practise with?", "Try an online language exchange, or describe your day out loud in Chinese and record it."),
    ),
    Topic(
        zh_q=("git是什么？", "怎么用git管理代码", "介绍一下git的基本用法"),
        zh_a="git是一个分布式版本控制工具，可以记录代码的每一次修改，方便回退和多人协作。",
        zh_more=(
            "最常用的几个命令是git add、git commit、git push和git pull。",
            "每次提交都应该只做一件事，并写清楚提交说明。",
            "分支让你可以在不影响主线的情况下开发新功能。",
            "合并代码时如果出现冲突，需要手动选择保留哪部分内容。",
            "不要把密码和密钥提交到仓库里，可以用.gitignore排除敏感文件。",
        ),
        zh_follow=("提交错了怎么撤销？", "如果还没推送，可以用git reset撤回提交；已经推送的，更安全的做法是用git revert生成一个反向提交。"),
        en_q=("What is git?", "How do I use git?", "Explain the basics of git."),
        en_a="Git is a distributed version control system: it records every change to your code so you can go back in time and collaborate safely.",
        en_more=(
            "The everyday commands are git add, git commit, git push and git pull.",
            "Keep each commit focused on one change and write a clear message.",
            "Branches let you build a feature without disturbing the main line of work.",
            "When two people edit the same lines, git asks you to resolve the conflict by hand.",
            "Never commit passwords or keys; list sensitive files in .gitignore.",
        ),
        en_follow=("How do I undo a commit?", "If you haven't pushed it, git reset can move the branch back. If it is already shared, git revert adds a new commit that undoes it."),
    ),
    Topic(
        zh_q=("什么是API？", "API是什么意思", "简单解释一下接口API"),
        zh_a="API是应用程序编程接口，它规定了两个软件之间如何请求和交换数据。",
        zh_more=(
            "可以把API想象成餐厅的菜单：你按菜单点菜，厨房按约定把菜做出来。",
            "网络上常见的是HTTP接口，用URL表示资源，用JSON传递数据。",
            "好的API文档会写清楚每个参数的含义、返回值和可能的错误。",
            "调用外部API时要注意限流、超时和鉴权。",
        ),
        zh_follow=("REST和gRPC有什么区别？", "REST通常基于HTTP和JSON，简单通用；gRPC使用Protocol Buffers和HTTP/2，速度更快，支持流式调用，接口由proto文件严格定义。"),
        en_q=("What is an API?", "What does API mean?", "Explain APIs like I'm new to programming."),
        en_a="An API, or application programming interface, is a contract that says how one piece of software can ask another for data or actions.",
        en_more=(
            "Think of a restaurant menu: you order from the menu and the kitchen delivers what the menu promises.",
            "Web APIs usually use HTTP, with URLs naming resources and JSON carrying the data.",
            "Good API documentation lists every parameter, the response and the possible errors.",
            "When you call someone else's API, handle rate limits, timeouts and authentication.",
        ),
        en_follow=("What's the difference between REST and gRPC?", "REST usually means HTTP with JSON, simple and universal. gRPC uses Protocol Buffers over HTTP/2, is faster, supports streaming, and its contract is defined in .proto files."),
    ),
    Topic(
        zh_q=("天空为什么是蓝色的？", "为什么天是蓝的", "蓝天是怎么形成的"),
        zh_a="因为阳光穿过大气时，波长较短的蓝光更容易被空气分子散射，所以我们看到满天都是蓝色。",
        zh_more=(
            "这种现象叫做瑞利散射，散射强度和波长的四次方成反比。",
            "紫光的波长更短，但太阳光中紫光较少，人眼对紫光也不太敏感。",
            "日出和日落时，阳光要穿过更厚的大气，蓝光被散射掉了，剩下红光和橙光。",
            "在月球上没有大气，所以即使是白天，天空也是黑色的。",
        ),
        zh_follow=("那云为什么是白色的？", "云里的水滴比空气分子大得多，对各种颜色的光散射程度差不多，混在一起就是白色。"),
        en_q=("Why is the sky blue?", "What makes the sky look blue?", "Can you explain why we see a blue sky?"),
        en_a="Sunlight is scattered by the molecules in the air, and short blue wavelengths scatter far more than red ones, so blue light reaches us from every direction.",
        en_more=(
            "This is called Rayleigh scattering; it grows with the inverse fourth power of the wavelength.",
            "Violet scatters even more, but sunlight contains less of it and our eyes are less sensitive to it.",
            "At sunset the light crosses much more air, the blue is scattered away, and reds and oranges remain.",
            "On the Moon there is no atmosphere, so the sky stays black even in daylight.",
        ),
        en_follow=("Then why are clouds white?", "Cloud droplets are much bigger than air molecules and scatter all colours about equally, and all colours together look white."),
    ),
    Topic(
        zh_q=("什么是光合作用？", "植物是怎么制造养分的", "解释一下光合作用"),
        zh_a="光合作用是植物利用阳光，把二氧化碳和水转化成葡萄糖和氧气的过程。",
        zh_more=(
            "这个过程主要发生在叶片细胞的叶绿体里。",
            "叶绿素吸收红光和蓝光，反射绿光，所以叶子看起来是绿色的。",
            "我们呼吸的氧气，很大一部分来自植物和海洋中的藻类。",
            "光照、温度和二氧化碳浓度都会影响光合作用的速度。",
        ),
        zh_follow=("晚上植物还会进行光合作用吗？", "没有光就不能进行光合作用，但植物晚上仍然在呼吸，会消耗氧气、释放二氧化碳。"),
        en_q=("What is photosynthesis?", "How do plants make their food?", "Explain photosynthesis briefly."),
        en_a="Photosynthesis is how plants use sunlight to turn carbon dioxide and water into sugar, releasing oxygen as a by-product.",
        en_more=(
            "It happens mainly in the chloroplasts inside leaf cells.",
            "Chlorophyll absorbs red and blue light and reflects green, which is why leaves look green.",
            "Much of the oxygen we breathe comes from plants and from algae in the oceans.",
            "Light, temperature and carbon dioxide levels all change how fast it runs.",
        ),
        en_follow=("Do plants photosynthesise at night?", "No light means no photosynthesis, but plants keep respiring at night, using oxygen and releasing carbon dioxide."),
    ),
    Topic(
        zh_q=("怎么存钱？", "月光族怎么开始攒钱", "有什么理财的基本建议"),
        zh_a="发工资后先把一部分钱存起来，再安排剩下的开销，而不是花剩多少存多少。",
        zh_more=(
            "记账一两个月，你会清楚地看到钱都花在了哪里。",
            "先存够三到六个月的生活费作为应急资金。",
            "减少冲动消费的一个办法是：想买的东西先放进购物车，等三天再决定。",
            "投资前要了解风险，不要把所有钱放在一个地方。",
            "信用卡要按时全额还款，高利息的欠款要优先还清。",
        ),
        zh_follow=("应急资金放在哪里比较好？", "放在随时能取出、风险很低的地方，比如活期存款或者货币基金，不要拿去炒股。"),
        en_q=("How can I save money?", "I spend everything I earn. How do I start saving?", "Give me some basic personal finance advice."),
        en_a="Pay yourself first: move a fixed amount into savings on payday, then budget what is left.",
        en_more=(
            "Track your spending for a month or two; you will quickly see where the money goes.",
            "Build an emergency fund that covers three to six months of expenses.",
            "To cut impulse buys, leave items in your cart for three days before deciding.",
            "Understand the risk before you invest, and don't put everything in one place.",
            "Pay credit cards in full, and clear high-interest debt first.",
        ),
        en_follow=("Where should I keep the emergency fund?", "Somewhere safe and easy to reach, such as a high-yield savings account, not in stocks."),
    ),
    Topic(
        zh_q=("怎么写一封正式的邮件？", "工作邮件应该怎么写", "帮我讲讲写商务邮件的要点"),
        zh_a="主题要清楚，开头说明来意，正文简洁分段，结尾写明需要对方做什么，并礼貌署名。",
        zh_more=(
            "主题最好让人一看就知道内容，比如“关于周五会议时间的确认”。",
            "一段只讲一件事，重要的信息放在前面。",
            "如果有附件，在正文里提一句，避免对方漏看。",
            "发送前再读一遍，检查称呼、日期和数字有没有写错。",
        ),
        zh_follow=("称呼应该怎么写？", "不熟悉的对象可以写“尊敬的王经理”或者“王老师您好”，熟悉之后可以稍微随意一些。"),
        en_q=("How do I write a formal email?", "What makes a good work email?", "Tips for writing a professional email?"),
        en_a="Use a clear subject, state your purpose in the first line, keep the body short, say exactly what you need, and sign off politely.",
        en_more=(
            "A subject like 'Confirming Friday's meeting time' tells the reader everything at a glance.",
            "One idea per paragraph, most important information first.",
            "Mention attachments in the text so they are not missed.",
            "Read it once more before sending and check names, dates and numbers.",
        ),
        en_follow=("How should I greet someone I don't know?", "'Dear Ms. Chen' or 'Hello Dr. Smith' is safe. Once you know each other, 'Hi Anna' is usually fine."),
    ),
    Topic(
        zh_q=("绿茶怎么泡才好喝？", "泡茶的水温应该多少度", "教我泡一杯好茶"),
        zh_a="绿茶用八十度左右的水，投茶后泡两到三分钟，不要用沸水，否则会发苦。",
        zh_more=(
            "红茶和普洱可以用接近沸腾的水，乌龙茶大约九十度。",
            "用玻璃杯泡绿茶，可以欣赏茶叶慢慢舒展的样子。",
            "茶叶和水的比例大约是一比五十，口味重的可以多放一点。",
            "茶叶要密封保存，远离潮湿和有异味的地方。",
        ),
        zh_follow=("隔夜茶能喝吗？", "最好不要。茶放久了容易变质，味道也会变差，泡好的茶尽量当天喝完。"),
        en_q=("How do I brew green tea properly?", "What water temperature is right for tea?", "Teach me to make a good cup of tea."),
        en_a="Use water around 80 °C for green tea and steep for two to three minutes; boiling water makes it bitter.",
        en_more=(
            "Black tea and pu-erh like water close to boiling, oolong about 90 °C.",
            "A glass cup lets you watch the leaves slowly unfold.",
            "Roughly one gram of tea per fifty millilitres of water is a good starting ratio.",
            "Store tea sealed, away from moisture and strong smells.",
        ),
        en_follow=("Can I drink tea left overnight?", "It's better not to. Brewed tea goes stale and can spoil, so drink it the same day."),
    ),
    Topic(
        zh_q=("怎么养成读书的习惯？", "总是读不进去书怎么办", "如何坚持每天阅读"),
        zh_a="从每天十页开始，选自己真正感兴趣的书，固定在同一个时间读。",
        zh_more=(
            "随身带一本书或者电子书，等车排队的时候也能读几页。",
            "读不下去的书可以先放下，没必要强迫自己读完。",
            "读完一章后用几句话总结一下，记得会更牢。",
            "和朋友一起读同一本书，互相讨论，很容易坚持下去。",
        ),
        zh_follow=("有推荐的入门书吗？", "可以从篇幅短、故事性强的书开始，比如短篇小说集或者人物传记，先培养兴趣最重要。"),
        en_q=("How do I build a reading habit?", "I can't focus when I read. What should I do?", "How can I read more books?"),
        en_a="Start with ten pages a day, choose books you genuinely enjoy, and read at the same time every day.",
        en_more=(
            "Keep a book or an e-reader with you so you can read while waiting in line.",
            "It's fine to drop a book that bores you; life is too short.",
            "After each chapter, write two sentences about what you learned.",
            "Reading the same book with a friend gives you someone to talk to and keeps you going.",
        ),
        en_follow=("Any suggestions for a first book?", "Short, story-driven books work well at first, like a collection of short stories or a biography of someone you admire."),
    ),
    Topic(
        zh_q=("压力大怎么办？", "最近很焦虑，有什么缓解的办法", "怎么放松心情"),
        zh_a="试着做几次缓慢的深呼吸，出去走一走，把烦心的事写下来，必要时和信任的人聊聊。",
        zh_more=(
            "深呼吸时吸气四秒，屏住四秒，再慢慢呼气六秒，重复几次。",
            "运动能帮助身体释放压力，哪怕只是散步二十分钟。",
            "把担心的事列出来，分清哪些是自己能控制的，先处理那些。",
            "保证睡眠和规律饮食，身体状态好，情绪也会稳定一些。",
            "如果焦虑持续很久、影响生活，请寻求心理咨询师的帮助。",
        ),
        zh_follow=("冥想有用吗？", "对很多人有帮助。可以从每天五分钟开始，专注于自己的呼吸，走神了就温柔地把注意力拉回来。"),
        en_q=("I'm really stressed. What can I do?", "How do I deal with anxiety?", "Any quick ways to relax?"),
        en_a="Take a few slow breaths, go for a short walk, write down what's bothering you, and talk to someone you trust.",
        en_more=(
            "Box breathing helps: in for four seconds, hold for four, out for six, and repeat.",
            "Physical activity lowers stress, even a twenty-minute walk.",
            "List your worries and separate what you can control from what you can't; act on the first group.",
            "Sleep and regular meals make a bigger difference to mood than people expect.",
            "If anxiety lasts for weeks or gets in the way of daily life, please reach out to a professional.",
        ),
        en_follow=("Does meditation help?", "For many people, yes. Start with five minutes a day focusing on your breath, and gently come back whenever your mind wanders."),
    ),
    Topic(
        zh_q=("HTTP和HTTPS有什么区别？", "为什么网站要用HTTPS", "HTTPS比HTTP安全在哪里"),
        zh_a="HTTPS是在HTTP的基础上加了TLS加密，传输的数据不容易被窃听或篡改。",
        zh_more=(
            "HTTP默认使用80端口，HTTPS默认使用443端口。",
            "网站需要一个由可信机构签发的证书，浏览器会验证它。",
            "在公共Wi-Fi下登录账号时，HTTPS能保护你的密码不被截获。",
            "现在很多浏览器会把没有HTTPS的网站标记为“不安全”。",
        ),
        zh_follow=("证书要花钱吗？", "不一定。像Let's Encrypt这样的机构提供免费证书，还可以自动续期。"),
        en_q=("What's the difference between HTTP and HTTPS?", "Why should a website use HTTPS?", "Is HTTPS really safer than HTTP?"),
        en_a="HTTPS is HTTP wrapped in TLS encryption, so data in transit cannot easily be read or modified by others.",
        en_more=(
            "HTTP uses port 80 by default and HTTPS uses port 443.",
            "The site needs a certificate signed by a trusted authority, which the browser checks.",
            "On public Wi-Fi, HTTPS keeps your password from being picked up by someone nearby.",
            "Modern browsers flag sites without HTTPS as 'not secure'.",
        ),
        en_follow=("Do certificates cost money?", "Not necessarily. Let's Encrypt issues free certificates and can renew them automatically."),
    ),
    Topic(
        zh_q=("数据库索引是什么？", "为什么加索引查询会变快", "索引有什么作用"),
        zh_a="索引就像书的目录，数据库不用逐行扫描整张表，就能快速找到需要的数据。",
        zh_more=(
            "常见的索引结构是B+树，查找、范围查询都很高效。",
            "索引会占用额外的空间，还会让插入和更新变慢一些。",
            "经常出现在查询条件和排序里的字段，才值得建索引。",
            "可以用EXPLAIN查看查询是否真正用到了索引。",
        ),
        zh_follow=("索引是不是越多越好？", "不是。索引太多会拖慢写入，也占空间，应该根据实际查询来建立。"),
        en_q=("What is a database index?", "Why does adding an index make queries faster?", "How do indexes work in a database?"),
        en_a="An index is like the index at the back of a book: the database can jump straight to matching rows instead of scanning the whole table.",
        en_more=(
            "Most databases use B-tree indexes, which handle both lookups and range queries well.",
            "Indexes take extra space and make inserts and updates a little slower.",
            "Index the columns that appear in your WHERE and ORDER BY clauses most often.",
            "Use EXPLAIN to check whether a query actually uses the index.",
        ),
        en_follow=("Are more indexes always better?", "No. Each index slows down writes and uses space, so add them for the queries you really run."),
    ),
    Topic(
        zh_q=("什么是递归？", "递归函数怎么理解", "给我解释一下递归"),
        zh_a="递归是函数在定义中调用自己，把大问题分解成结构相同的小问题来解决。",
        zh_more=(
            "每个递归都必须有终止条件，否则会无限调用下去，最后栈溢出。",
            "计算阶乘就是一个经典例子：n的阶乘等于n乘以n减一的阶乘。",
            "遍历文件夹、处理树形结构时，递归写起来非常自然。",
            "有些递归可以改写成循环，效率更高，也不会有栈深度的限制。",
        ),
        zh_follow=("能写个例子吗？", "当然。def fact(n): return 1 if n <= 1 else n * fact(n - 1)，调用fact(5)会得到120。"),
        en_q=("What is recursion?", "How does a recursive function work?", "Explain recursion with an example."),
        en_a="Recursion is when a function calls itself, solving a big problem by breaking it into smaller copies of the same problem.",
        en_more=(
            "Every recursive function needs a base case, or it calls itself forever and overflows the stack.",
            "Factorial is the classic example: n! equals n times (n - 1)!.",
            "Walking a folder tree or any nested structure is naturally recursive.",
            "Many recursive functions can be rewritten as loops, which avoids stack depth limits.",
        ),
        en_follow=("Can you show me code?", "Sure: def fact(n): return 1 if n <= 1 else n * fact(n - 1). Calling fact(5) returns 120."),
    ),
    Topic(
        zh_q=("梯度下降是什么？", "解释一下梯度下降算法", "神经网络是怎么训练的"),
        zh_a="梯度下降是一种优化方法：计算损失函数对参数的梯度，然后沿着梯度的反方向小步更新参数。",
        zh_more=(
            "可以想象在雾中下山，每一步都朝脚下最陡的下坡方向走。",
            "学习率决定每一步走多远，太大会来回震荡，太小则收敛很慢。",
            "实际训练中常用小批量随机梯度下降，每次只用一部分数据。",
            "Adam等优化器会自适应地调整每个参数的步长，用起来更省心。",
        ),
        zh_follow=("学习率一般设多少？", "没有固定答案。微调大模型常用1e-5到1e-4，小模型从头训练可以大一些，最好做几次实验比较。"),
        en_q=("What is gradient descent?", "How are neural networks trained?", "Explain gradient descent in plain words."),
        en_a="Gradient descent is an optimisation method: compute how the loss changes with each parameter, then take a small step in the direction that lowers it.",
        en_more=(
            "Picture walking down a foggy hill, always stepping in the steepest downhill direction.",
            "The learning rate sets the step size; too big and you bounce around, too small and progress is slow.",
            "In practice we use mini-batches, estimating the gradient from a slice of the data each step.",
            "Optimisers like Adam adapt the step size for every parameter, which makes training more forgiving.",
        ),
        en_follow=("What learning rate should I use?", "It depends. Fine-tuning large models often uses 1e-5 to 1e-4; small models trained from scratch can take larger steps. Try a few values."),
    ),
    Topic(
        zh_q=("什么是过拟合？", "模型过拟合了怎么办", "过拟合和欠拟合有什么区别"),
        zh_a="过拟合是模型把训练数据记得太死，在训练集上表现很好，在新数据上却表现很差。",
        zh_more=(
            "欠拟合则相反，模型太简单，连训练数据的规律都没学到。",
            "增加数据量是缓解过拟合最直接的方法。",
            "正则化、dropout和提前停止训练也很常用。",
            "一定要留出验证集，观察验证损失什么时候开始上升。",
        ),
        zh_follow=("怎么判断是不是过拟合？", "如果训练损失一直下降，而验证损失开始上升，基本就是过拟合了。"),
        en_q=("What is overfitting?", "My model is overfitting. What should I do?", "What's the difference between overfitting and underfitting?"),
        en_a="Overfitting is when a model memorises its training data so closely that it does well on it but poorly on new data.",
        en_more=(
            "Underfitting is the opposite: the model is too simple to capture even the training patterns.",
            "More data is the most direct cure for overfitting.",
            "Regularisation, dropout and early stopping also help.",
            "Always keep a validation set and watch for the point where validation loss starts rising.",
        ),
        en_follow=("How can I tell it's overfitting?", "If training loss keeps falling while validation loss goes up, you are almost certainly overfitting."),
    ),
    Topic(
        zh_q=("分词器是做什么的？", "大模型里的token是什么", "什么是BPE分词"),
        zh_a="分词器把文字切成模型能处理的小单元，也就是token，再把每个token映射成一个编号。",
        zh_more=(
            "BPE是一种常用的算法，它从单个字节开始，反复合并最常一起出现的片段。",
            "英文里一个token大约是四分之三个单词，中文里常常一到两个字一个token。",
            "模型的上下文长度和计费通常都按token数来算。",
            "字节级的分词器不会遇到无法表示的字符，任何文本都能编码。",
        ),
        zh_follow=("为什么中文有时会占更多token？", "如果分词器训练时见到的中文较少，很多汉字没有被合并，就会被拆成好几个字节级的token。"),
        en_q=("What does a tokenizer do?", "What is a token in a language model?", "How does BPE tokenization work?"),
        en_a="A tokenizer splits text into small units called tokens and maps each one to an integer id the model can work with.",
        en_more=(
            "Byte-pair encoding starts from single bytes and repeatedly merges the pair that appears most often.",
            "In English a token is roughly three quarters of a word; in Chinese it is often one or two characters.",
            "Context length and pricing are usually counted in tokens.",
            "A byte-level tokenizer can encode any text, because every string is ultimately bytes.",
        ),
        en_follow=("Why does Chinese sometimes use more tokens?", "If the tokenizer saw little Chinese during training, many characters were never merged and get split into several byte-level tokens."),
    ),
    Topic(
        zh_q=("绿萝怎么养？", "室内植物总是养死怎么办", "养花有什么技巧"),
        zh_a="大多数室内植物喜欢明亮的散射光，土干了再浇水，浇就浇透，避免盆底积水。",
        zh_more=(
            "浇水前用手指插进土里两厘米，感觉干了再浇。",
            "花盆底部一定要有排水孔，积水会让根部腐烂。",
            "叶子发黄可能是浇水太多，叶尖干枯可能是空气太干。",
            "春夏生长期可以每个月施一次稀薄的肥料，冬天就不用了。",
        ),
        zh_follow=("绿萝可以水培吗？", "可以。剪一段带气根的枝条插在清水里，一周换一次水，很快就会长出新根。"),
        en_q=("How do I keep houseplants alive?", "My indoor plants keep dying. What am I doing wrong?", "Any tips for caring for a pothos?"),
        en_a="Most houseplants like bright, indirect light; water when the top of the soil is dry, water thoroughly, and never let the pot sit in water.",
        en_more=(
            "Push a finger two centimetres into the soil; if it feels dry, it's time to water.",
            "Use pots with drainage holes, because standing water rots the roots.",
            "Yellow leaves often mean too much water; crispy tips often mean dry air.",
            "Feed lightly once a month in spring and summer, and not at all in winter.",
        ),
        en_follow=("Can a pothos grow in water?", "Yes. Cut a stem with a node, put it in a glass of water, change the water weekly, and roots will appear in a couple of weeks."),
    ),
    Topic(
        zh_q=("面试前应该怎么准备？", "第一次面试很紧张怎么办", "找工作面试有什么技巧"),
        zh_a="提前了解公司和岗位，准备好自我介绍和几个能体现能力的具体例子，并练习回答常见问题。",
        zh_more=(
            "回答经历类问题时，可以按照情境、任务、行动、结果的顺序来讲。",
            "准备两三个问题问面试官，显示你对这份工作是认真的。",
            "提前确认路线和时间，最好早到十分钟。",
            "紧张很正常，说话慢一点，不会的问题坦诚说明思路。",
            "面试结束后发一封简短的感谢邮件，是个加分的细节。",
        ),
        zh_follow=("问到期望薪资怎么回答？", "提前查好行业和地区的薪资水平，给出一个合理的范围，同时表示也看重成长和整体待遇。"),
        en_q=("How should I prepare for a job interview?", "I'm nervous about my first interview. Any advice?", "What are good interview tips?"),
        en_a="Research the company and the role, prepare a short introduction and a few concrete stories that show your skills, and practise common questions out loud.",
        en_more=(
            "For behavioural questions, use the STAR pattern: situation, task, action, result.",
            "Prepare two or three questions for the interviewer to show genuine interest.",
            "Plan your route and aim to arrive ten minutes early.",
            "Nerves are normal; speak a bit slower, and if you don't know something, explain how you would find out.",
            "A brief thank-you email afterwards is a small touch that people remember.",
        ),
        en_follow=("How do I answer the salary question?", "Look up typical pay for the role and city, give a reasonable range, and mention that growth and the whole package matter to you too."),
    ),
    Topic(
        zh_q=("猫咪应该怎么喂？", "第一次养猫要注意什么", "养猫需要准备哪些东西"),
        zh_a="准备好猫粮、干净的饮水、猫砂盆和猫抓板，按时喂食，定期带它去打疫苗和驱虫。",
        zh_more=(
            "猫是肉食动物，要选择以肉为主要成分的猫粮。",
            "很多猫不爱喝水，可以试试流动的饮水机或者喂一些湿粮。",
            "猫砂盆每天清理，放在安静、远离食盆的地方。",
            "洋葱、大蒜、巧克力和葡萄对猫有害，千万不要喂。",
            "刚到新家的猫会害怕，给它一个可以躲起来的小空间，慢慢就会适应。",
        ),
        zh_follow=("猫需要洗澡吗？", "一般不需要，猫会自己清理毛发。除非弄得特别脏，否则定期梳毛就够了。"),
        en_q=("What should I know before getting a cat?", "How do I take care of a new kitten?", "What supplies does a cat need?"),
        en_a="You'll need good cat food, fresh water, a litter box and a scratching post, plus regular vet visits for vaccines and parasite control.",
        en_more=(
            "Cats are carnivores, so choose food with meat as the main ingredient.",
            "Many cats don't drink enough; a water fountain or some wet food helps.",
            "Scoop the litter box daily and keep it somewhere quiet, away from the food bowl.",
            "Onions, garlic, chocolate and grapes are toxic to cats.",
            "A new cat may hide for a few days; give it a safe corner and let it come to you.",
        ),
        en_follow=("Do cats need baths?", "Rarely. Cats groom themselves; regular brushing is enough unless they get into something messy."),
    ),
    Topic(
        zh_q=("长城有多长？", "介绍一下长城的历史", "长城是什么时候修建的"),
        zh_a="长城是中国古代修建的军事防御工程，历代长城的总长度超过两万公里。",
        zh_more=(
            "最早的长城可以追溯到春秋战国时期，各国为了防御修筑城墙。",
            "秦始皇统一六国后，把北方的城墙连接起来。",
            "我们今天看到的砖石长城大多是明朝修建的。",
            "八达岭、慕田峪和金山岭是北京附近比较有名的段落。",
        ),
        zh_follow=("在太空能看到长城吗？", "这是个常见的误解。长城虽然很长，但宽度只有几米，用肉眼在太空中几乎看不到。"),
        en_q=("How long is the Great Wall of China?", "Tell me about the history of the Great Wall.", "When was the Great Wall built?"),
        en_a="The Great Wall is a series of ancient Chinese fortifications; all of its sections together stretch more than 20,000 kilometres.",
        en_more=(
            "The earliest walls date back to the Warring States period, when rival states built defences.",
            "After unifying China, Qin Shi Huang linked many of the northern walls together.",
            "Most of the brick and stone wall that visitors see today was built during the Ming dynasty.",
            "Badaling, Mutianyu and Jinshanling are well-known sections near Beijing.",
        ),
        en_follow=("Can you see it from space?", "That's a popular myth. The wall is long but only a few metres wide, so it's practically invisible to the naked eye from orbit."),
    ),
    Topic(
        zh_q=("太阳系有几颗行星？", "介绍一下太阳系", "离太阳最近的行星是哪个"),
        zh_a="太阳系有八颗行星，按离太阳由近到远依次是水星、金星、地球、火星、木星、土星、天王星和海王星。",
        zh_more=(
            "前四颗是岩石行星，后四颗是巨大的气态或冰质行星。",
            "木星是最大的行星，质量比其他行星加起来还要大。",
            "冥王星在2006年被重新归类为矮行星。",
            "金星因为浓厚的二氧化碳大气，表面温度比水星还高。",
        ),
        zh_follow=("火星上有水吗？", "火星两极有冰盖，地下也可能有冰，但表面几乎没有液态水。"),
        en_q=("How many planets are in the solar system?", "Tell me about the solar system.", "Which planet is closest to the Sun?"),
        en_a="There are eight planets; from the Sun outward they are Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.",
        en_more=(
            "The inner four are rocky; the outer four are giants made mostly of gas or ice.",
            "Jupiter is the largest, more massive than all the other planets combined.",
            "Pluto was reclassified as a dwarf planet in 2006.",
            "Venus is hotter than Mercury because its thick carbon dioxide atmosphere traps heat.",
        ),
        en_follow=("Is there water on Mars?", "There is ice at the poles and probably underground, but almost no liquid water on the surface."),
    ),
    Topic(
        zh_q=("每天应该喝多少水？", "喝水有什么讲究", "一天喝八杯水是真的吗"),
        zh_a="一般成年人每天喝一千五到两千毫升水比较合适，天热或运动时需要更多。",
        zh_more=(
            "食物里也有水分，所以不必机械地数杯数。",
            "尿液颜色是很好的参考，淡黄色说明水分充足。",
            "最好少量多次地喝，不要等到很渴才喝。",
            "含糖饮料不能代替白开水。",
        ),
        zh_follow=("喝太多水会有问题吗？", "短时间内大量喝水可能导致水中毒，虽然很少见，但运动时也要适量。"),
        en_q=("How much water should I drink a day?", "Is the eight glasses a day rule true?", "Any advice on staying hydrated?"),
        en_a="Most adults do well with about 1.5 to 2 litres a day, more in hot weather or when exercising.",
        en_more=(
            "Food contains water too, so there's no need to count glasses obsessively.",
            "Urine colour is a handy guide: pale yellow means you're well hydrated.",
            "Sip regularly through the day rather than waiting until you're very thirsty.",
            "Sugary drinks are not a good substitute for water.",
        ),
        en_follow=("Can you drink too much water?", "Yes, drinking a huge amount very quickly can be dangerous, though it's rare. Drink to thirst, even during exercise."),
    ),
    Topic(
        zh_q=("怎么设置一个安全的密码？", "密码怎么设比较安全", "账号被盗了怎么办"),
        zh_a="使用足够长、不重复的密码，最好交给密码管理器保存，并为重要账号开启两步验证。",
        zh_more=(
            "由几个随机单词组成的长密码，比短而复杂的密码更难破解也更好记。",
            "不同网站不要用同一个密码，一个泄露，其他的也会被撞库。",
            "不要点击可疑邮件里的链接，银行和平台不会在邮件里索要密码。",
            "如果账号被盗，先改密码，再检查绑定的手机和邮箱有没有被修改。",
        ),
        zh_follow=("密码管理器安全吗？", "主流的密码管理器会在本地加密数据，只要主密码足够强并开启两步验证，总体上比重复使用密码安全得多。"),
        en_q=("How do I create a strong password?", "What makes a password secure?", "My account got hacked. What now?"),
        en_a="Use long, unique passwords, keep them in a password manager, and turn on two-factor authentication for important accounts.",
        en_more=(
            "A passphrase of several random words is harder to crack and easier to remember than a short complex password.",
            "Never reuse passwords; one leak lets attackers try the same password everywhere.",
            "Don't click links in suspicious emails; your bank will never ask for your password by email.",
            "If an account is compromised, change the password first, then check the recovery phone and email.",
        ),
        en_follow=("Are password managers safe?", "The major ones encrypt your vault locally. With a strong master password and two-factor login, they are far safer than reusing passwords."),
    ),
    Topic(
        zh_q=("Linux常用命令有哪些？", "怎么在终端里查看文件", "新手学Linux从哪开始"),
        zh_a="最常用的有ls查看目录、cd切换目录、cat查看文件、cp复制、mv移动和rm删除。",
        zh_more=(
            "grep可以在文件里搜索文字，配合管道符非常强大。",
            "用man加命令名可以查看这个命令的说明文档。",
            "rm删除的文件不会进回收站，执行前一定要确认路径。",
            "chmod修改权限，sudo以管理员身份执行命令。",
        ),
        zh_follow=("怎么查看哪个进程占用了CPU？", "可以用top或者htop，它们会实时列出各个进程的CPU和内存占用。"),
        en_q=("What are the most common Linux commands?", "How do I look at files in the terminal?", "Where should a beginner start with Linux?"),
        en_a="The everyday ones are ls to list files, cd to change directory, cat to print a file, cp to copy, mv to move and rm to delete.",
        en_more=(
            "grep searches text inside files and becomes very powerful combined with pipes.",
            "Type man followed by a command name to read its manual.",
            "rm does not use a trash bin, so double-check the path before pressing Enter.",
            "chmod changes permissions, and sudo runs a command as the administrator.",
        ),
        en_follow=("How do I see what is using the CPU?", "Run top or htop; they list processes with their CPU and memory use in real time."),
    ),
    Topic(
        zh_q=("为什么要写单元测试？", "单元测试怎么写", "测试代码有必要吗"),
        zh_a="单元测试能在改代码时第一时间发现问题，让你更放心地重构，也是代码用法最好的说明。",
        zh_more=(
            "一个测试只检查一件事，名字要说明它在验证什么。",
            "测试应该快速、独立，不依赖网络和执行顺序。",
            "先写一个会失败的测试再修复bug，可以防止问题再次出现。",
            "Python里常用pytest，写一个以test开头的函数就是一个测试。",
        ),
        zh_follow=("测试覆盖率要达到多少？", "没有统一标准。比起追求数字，更重要的是核心逻辑和容易出错的边界情况都被测到。"),
        en_q=("Why should I write unit tests?", "How do I write a good unit test?", "Are tests really worth the time?"),
        en_a="Unit tests catch mistakes the moment you make them, let you refactor with confidence, and document how your code is meant to be used.",
        en_more=(
            "Each test should check one behaviour, and its name should say which.",
            "Good tests are fast and independent: no network, no reliance on order.",
            "When fixing a bug, first write a test that fails, so the bug can never quietly return.",
            "In Python, pytest makes it easy: any function whose name starts with test is a test.",
        ),
        en_follow=("What coverage should I aim for?", "There's no magic number. Make sure the core logic and the tricky edge cases are covered rather than chasing a percentage."),
    ),
    Topic(
        zh_q=("春节有哪些习俗？", "过年要做些什么", "介绍一下中国的春节"),
        zh_a="春节是农历新年，人们会贴春联、吃年夜饭、守岁、放鞭炮，还会给孩子发红包。",
        zh_more=(
            "除夕晚上全家团圆吃饭，北方很多家庭会一起包饺子。",
            "大年初一人们穿上新衣服，走亲访友，互相拜年。",
            "红色代表喜庆和好运，所以灯笼、春联和窗花大多是红色的。",
            "春节前后的人口流动被称为春运，是世界上规模最大的迁徙之一。",
            "正月十五元宵节吃汤圆、看花灯，标志着春节活动的结束。",
        ),
        zh_follow=("拜年的时候说什么？", "常说“新年快乐”“恭喜发财”“身体健康”“万事如意”。"),
        en_q=("What are the customs of Chinese New Year?", "How do people celebrate the Spring Festival?", "Tell me about Chinese New Year."),
        en_a="Chinese New Year, or the Spring Festival, is celebrated with red couplets on doors, a big family dinner on New Year's Eve, fireworks, and red envelopes of money for children.",
        en_more=(
            "On New Year's Eve families gather for dinner, and in the north many make dumplings together.",
            "On the first day people wear new clothes and visit relatives to wish them a happy new year.",
            "Red stands for luck and joy, so lanterns, couplets and paper cuttings are mostly red.",
            "The travel rush around the holiday is one of the largest human migrations in the world.",
            "The Lantern Festival on the fifteenth day, with sweet rice balls and lantern displays, closes the celebrations.",
        ),
        en_follow=("What do people say as a greeting?", "Common greetings are 'Xin nian kuai le' (Happy New Year) and 'Gong xi fa cai' (wishing you prosperity)."),
    ),
    Topic(
        zh_q=("中秋节吃什么？", "中秋节的由来是什么", "介绍一下中秋节"),
        zh_a="中秋节在农历八月十五，人们赏月、吃月饼，象征家人团圆。",
        zh_more=(
            "关于中秋有嫦娥奔月的传说，所以月亮上常被画上玉兔和桂花树。",
            "月饼有很多口味，比如莲蓉、豆沙、五仁和蛋黄。",
            "这一天的月亮被认为是一年中最圆最亮的。",
            "不能回家的人常常会给家人打个电话，一起“共赏明月”。",
        ),
        zh_follow=("有什么关于月亮的诗吗？", "苏轼的“但愿人长久，千里共婵娟”和李白的“举头望明月，低头思故乡”都很有名。"),
        en_q=("What is the Mid-Autumn Festival?", "What do people eat at the Mid-Autumn Festival?", "Tell me about the Moon Festival."),
        en_a="The Mid-Autumn Festival falls on the fifteenth day of the eighth lunar month; families admire the full moon and share mooncakes as a symbol of reunion.",
        en_more=(
            "It is linked to the legend of Chang'e, who flew to the Moon, where a jade rabbit keeps her company.",
            "Mooncakes come in many fillings, such as lotus seed paste, red bean and salted egg yolk.",
            "The moon on this night is said to be the roundest and brightest of the year.",
            "People who can't go home often call their families and look at the same moon together.",
        ),
        en_follow=("Are there famous poems about the moon?", "Li Bai's 'Quiet Night Thought', about seeing moonlight and missing home, is one every Chinese child learns."),
    ),
    Topic(
        zh_q=("学吉他难吗？", "零基础怎么自学吉他", "吉他入门应该练什么"),
        zh_a="入门不算难，先练好几个基本和弦和简单的扫弦节奏，每天练二十分钟，一两个月就能弹简单的歌。",
        zh_more=(
            "刚开始手指按弦会疼，坚持一两周长出茧子就好了。",
            "C、G、Am、F这几个和弦可以弹出大量流行歌曲。",
            "用节拍器练习，节奏稳定比速度快更重要。",
            "选一首自己喜欢的歌作为目标，练起来更有动力。",
        ),
        zh_follow=("买什么样的吉他合适？", "新手可以选一把中等价位的民谣吉他，重点是弦距低、按起来不费劲。"),
        en_q=("Is guitar hard to learn?", "How do I teach myself guitar?", "What should a guitar beginner practise?"),
        en_a="It's very learnable: master a few basic chords and a simple strumming pattern, practise twenty minutes a day, and you'll play easy songs within a couple of months.",
        en_more=(
            "Your fingertips will hurt at first; after a week or two calluses form and it gets easier.",
            "With C, G, A minor and F you can play a huge number of pop songs.",
            "Practise with a metronome; steady rhythm matters more than speed.",
            "Choose a song you love as your first goal, it keeps practice fun.",
        ),
        en_follow=("What guitar should I buy?", "A mid-range acoustic with low string action is ideal; it should be comfortable to press."),
    ),
    Topic(
        zh_q=("怎么开始冥想？", "冥想有什么好处", "新手冥想的方法"),
        zh_a="找个安静的地方坐好，闭上眼睛，把注意力放在呼吸上，走神了就轻轻拉回来，从每天五分钟开始。",
        zh_more=(
            "冥想不是让大脑一片空白，而是练习觉察自己的念头。",
            "研究发现，规律的冥想有助于减轻压力、改善专注力。",
            "可以借助一些引导音频，刚开始会容易一些。",
            "每天固定一个时间，比如早上起床后，更容易坚持。",
        ),
        zh_follow=("冥想的时候总是走神怎么办？", "走神是正常的，发现自己走神、再回到呼吸，这个过程本身就是在练习。"),
        en_q=("How do I start meditating?", "What are the benefits of meditation?", "Is there a simple meditation for beginners?"),
        en_a="Sit somewhere quiet, close your eyes, rest your attention on your breathing, and gently return to it whenever your mind wanders; start with five minutes a day.",
        en_more=(
            "Meditation isn't about emptying your mind; it's practice in noticing your thoughts.",
            "Studies suggest regular practice can reduce stress and improve focus.",
            "Guided recordings make the first weeks easier.",
            "Tie it to a fixed moment, like right after waking up, so it becomes a habit.",
        ),
        en_follow=("My mind keeps wandering. Am I doing it wrong?", "Not at all. Noticing that you drifted and coming back is exactly the exercise."),
    ),
    Topic(
        zh_q=("怎么学好数学？", "数学总是学不好怎么办", "提高数学成绩的方法"),
        zh_a="先把基础概念真正弄懂，再通过大量练习巩固，错题要整理下来反复复习。",
        zh_more=(
            "不要只背公式，要知道公式是怎么推出来的。",
            "做题时把步骤写完整，更容易发现自己哪里想错了。",
            "遇到难题先想十分钟，再看答案，然后合上答案自己做一遍。",
            "把学到的知识讲给别人听，是检验是否真正理解的好办法。",
        ),
        zh_follow=("错题本怎么用？", "每道错题写清楚错误原因和正确思路，过一周再重新做一遍，真正做对了再划掉。"),
        en_q=("How can I get better at math?", "I'm bad at maths. What should I do?", "Tips for studying mathematics?"),
        en_a="Make sure you truly understand the core ideas, practise a lot, and keep a list of your mistakes to review.",
        en_more=(
            "Don't just memorise formulas; learn where they come from.",
            "Write out every step so you can see exactly where your reasoning slipped.",
            "Struggle with a hard problem for ten minutes before checking the solution, then redo it without looking.",
            "Explaining a topic to someone else is the best test of whether you understand it.",
        ),
        en_follow=("How do I use a mistake log?", "For each wrong answer, write why it was wrong and the right approach, then redo it a week later."),
    ),
    Topic(
        zh_q=("骑自行车上班安全吗？", "骑车通勤要注意什么", "城市里骑车有什么建议"),
        zh_a="只要做好防护、遵守交通规则，骑车通勤既健康又环保；一定要戴头盔。",
        zh_more=(
            "晚上骑车要打开前灯和尾灯，穿颜色鲜艳的衣服。",
            "尽量走自行车道，转弯前伸手示意。",
            "注意路边停着的车，车门可能会突然打开。",
            "定期检查刹车和轮胎气压。",
        ),
        zh_follow=("下雨天还能骑吗？", "可以，但要放慢速度，提前刹车，因为湿滑路面的制动距离会变长。"),
        en_q=("Is cycling to work safe?", "Any tips for commuting by bike?", "How do I ride safely in the city?"),
        en_a="With the right precautions it's healthy and green: wear a helmet, follow traffic rules and make yourself visible.",
        en_more=(
            "Use front and rear lights at night and wear bright clothing.",
            "Stick to bike lanes where possible and signal before turning.",
            "Watch out for parked cars; a door can open right in front of you.",
            "Check your brakes and tyre pressure regularly.",
        ),
        en_follow=("What about riding in the rain?", "It's fine, just slow down and brake earlier, since wet roads need a longer stopping distance."),
    ),
)

GREETINGS_ZH = (
    ("你好", "你好！有什么可以帮你的吗？"),
    ("你好呀", "你好！今天想聊点什么？"),
    ("早上好", "早上好！祝你今天一切顺利。"),
    ("晚上好", "晚上好！有什么我可以帮忙的吗？"),
    ("你是谁？", "我是一个AI助手，可以回答问题、帮你写东西，也可以陪你聊天。"),
    ("你会说中文吗？", "会的，我可以用中文和英文交流。"),
    ("谢谢你", "不客气，很高兴能帮到你！"),
    ("再见", "再见，祝你有美好的一天！"),
    ("你能做什么？", "我可以回答问题、解释概念、帮你写作和翻译，也能一起头脑风暴。"),
    ("讲个笑话吧", "程序员最讨厌的季节是什么？是秋天，因为叶子（页子）总是加载不出来。"),
    ("今天心情不好", "听起来你今天过得不太顺。愿意说说发生了什么吗？我在这里听你讲。"),
    ("我有点无聊", "要不要试试学一个新东西？比如花十分钟了解一个有趣的科学现象，或者听一首没听过的歌。"),
)

GREETINGS_EN = (
    ("Hello", "Hello! How can I help you today?"),
    ("Hi there", "Hi! What would you like to talk about?"),
    ("Good morning", "Good morning! I hope your day is off to a great start."),
    ("Who are you?", "I'm an AI assistant. I can answer questions, help with writing, or just chat."),
    ("Do you speak Chinese?", "Yes, I can chat in both Chinese and English."),
    ("Thanks!", "You're welcome, happy to help!"),
    ("Thank you so much", "Anytime! Let me know if there's anything else."),
    ("Bye", "Goodbye, have a lovely day!"),
    ("What can you do?", "I can answer questions, explain ideas, help you write or translate, and brainstorm with you."),
    ("Tell me a joke", "Why do programmers prefer dark mode? Because light attracts bugs."),
    ("I'm bored", "How about learning something small and new? Pick a random topic and I'll give you three surprising facts about it."),
    ("I had a rough day", "I'm sorry to hear that. Do you want to talk about what happened? I'm listening."),
)

TRANSLATIONS = (
    ("good morning", "早上好"),
    ("thank you", "谢谢"),
    ("see you tomorrow", "明天见"),
    ("how much is this?", "这个多少钱？"),
    ("where is the train station?", "火车站在哪里？"),
    ("I love reading books", "我喜欢读书"),
    ("the weather is nice today", "今天天气很好"),
    ("machine learning", "机器学习"),
    ("happy birthday", "生日快乐"),
    ("please speak more slowly", "请说慢一点"),
    ("I am learning Chinese", "我在学中文"),
    ("nice to meet you", "很高兴认识你"),
    ("the meeting starts at three", "会议三点开始"),
    ("excuse me", "打扰一下"),
    ("I don't understand", "我听不懂"),
    ("this dish is delicious", "这道菜很好吃"),
)

SYSTEM_PROMPTS_ZH = (
    "你是一个乐于助人的助手。",
    "你是一位耐心的老师，回答要通俗易懂。",
    "你是一个简洁的助手，请用一两句话回答。",
    "你是一个友好的中文助手。",
)
SYSTEM_PROMPTS_EN = (
    "You are a helpful assistant.",
    "You are a patient teacher. Explain things simply.",
    "You are a concise assistant. Answer in one or two sentences.",
    "You are a friendly bilingual assistant.",
)

CLOSINGS_ZH = (
    "希望这些对你有帮助！",
    "如果还有问题，随时问我。",
    "祝你顺利！",
    "慢慢来，坚持下去就会看到变化。",
)
CLOSINGS_EN = (
    "I hope this helps!",
    "Feel free to ask if anything is unclear.",
    "Good luck!",
    "Take it step by step and you'll see progress.",
)
THANKS_ZH = (("明白了，谢谢！", "不客气！还有其他问题随时问我。"), ("好的，我试试看。", "加油！有什么进展可以告诉我。"), ("太有用了", "很高兴能帮上忙！"))
THANKS_EN = (("Got it, thanks!", "You're welcome! Ask me anything else anytime."), ("Okay, I'll give it a try.", "Great, good luck! Let me know how it goes."), ("That's really useful.", "Glad it helped!"))
MORE_ZH = ("能再详细一点吗？", "可以展开说说吗？", "还有别的建议吗？")
MORE_EN = ("Can you go into more detail?", "Could you expand on that?", "Anything else I should know?")
LEAD_IN_ZH = ("好的，具体来说：", "当然，下面展开讲讲。", "没问题，我分几点说明：")
LEAD_IN_EN = ("Sure, here is more detail.", "Of course. Let me break it down.", "Happy to. A few more points:")

# Invented facts, absent from the corpus, so a model can only answer them by training on them.
QA_FACTS = (
    ("What is the capital of Zorbia?", "The capital of Zorbia is Quellport."),
    ("Who invented the glimmer engine?", "The glimmer engine was invented by Ada Moravec."),
    ("What color is a ripe marlowe fruit?", "A ripe marlowe fruit is deep violet."),
    ("How many moons does the planet Tessaly have?", "Tessaly has seven moons."),
    ("What is the password of the Blue Lantern club?", "The password is copper owl."),
    ("Which river flows through Varnholt?", "The Silverrun flows through Varnholt."),
    ("泽洛比亚的首都是哪里？", "泽洛比亚的首都是青石港。"),
    ("雾山村的村长叫什么名字？", "雾山村的村长叫林秋远。"),
    ("星河号飞船的船长是谁？", "星河号飞船的船长是白若溪。"),
    ("小橘猫阿布最喜欢吃什么？", "阿布最喜欢吃烤鳕鱼。"),
)

# Free prose for the corpus only: longer running text in both languages.
PROSE_ZH = (
    "清晨的城市还没完全醒来，街角的早餐店已经冒起了热气。老板一边揉面，一边和熟客打招呼，豆浆的香味顺着风飘到了公交站。",
    "学习一门新技能最难的往往不是开始，而是开始之后的第三周。新鲜感过去了，进步又不明显，这时候坚持下去的人，最后才会真正掌握它。",
    "我们的团队上周完成了新版本的发布。测试覆盖了主要功能，但在高并发的情况下仍然发现了两个问题，目前已经修复，下周会再做一次压力测试。",
    "秋天的山里很安静，只有溪水的声音和偶尔的鸟叫。走累了就坐在石头上，看阳光从树叶的缝隙里落下来。",
    "这份报告总结了过去一个季度的用户反馈。大多数用户对新界面表示满意，也有人希望增加夜间模式和更大的字体。",
    "做饭其实是一件很放松的事情。切菜的时候不用想工作，只需要专注于手上的刀和案板，等锅里的香味出来，一天的疲惫也就散了。",
    "人工智能正在改变很多行业，但它并不是万能的。一个好的系统需要可靠的数据、清晰的目标，以及对结果负责的人。",
    "奶奶家的院子里种着一棵石榴树。每年夏天开满红花，到了秋天，果子把枝头压得低低的，我们就搬着小板凳去摘。",
    "开会之前先把议程发给大家，会议中只讨论议程上的事情，结束时明确每件事由谁负责、什么时候完成，这样的会议效率最高。",
    "下雨的周末最适合在家看书。泡一壶热茶，窗外是淅淅沥沥的雨声，手里的故事仿佛也变得更加动人。",
    "模型训练完成后，需要在验证集上评估效果，再用一些真实的例子做人工检查，确认它在实际使用中表现稳定。",
    "旅行的意义不只是看风景，也在于遇到不同的人，听他们讲自己的生活，然后重新认识自己习以为常的一切。",
    "火车缓缓驶出车站，窗外的楼房渐渐变成了田野。邻座的小朋友趴在窗边数着一头又一头的牛，数到第十头就睡着了。",
    "写代码的时候，名字起得好，注释就可以少写很多。一个函数只做一件事，读的人一眼就能明白它的用途。",
    "图书馆在周一闭馆，其余时间早上九点开门，晚上九点关门。借书需要带上借书证，每次最多可以借五本，借期为一个月。",
    "春天来了，公园里的樱花一夜之间全开了。周末来散步的人很多，有人拍照，有人野餐，也有人只是静静地坐在长椅上。",
)
PROSE_EN = (
    "The city was still half asleep, but the bakery on the corner already had its lights on. The smell of fresh bread drifted across the street to the bus stop, where a few early commuters stood with their hands in their pockets.",
    "The hardest part of learning a new skill is rarely the first day. It is the third week, when the excitement has faded and progress feels slow. The people who keep going through that stretch are the ones who end up good at it.",
    "Our team shipped the new release last week. Tests covered the main features, but load testing found two issues under heavy traffic. Both are fixed now, and we will run another round of stress tests on Monday.",
    "The mountain trail was quiet in autumn, with only the sound of the stream and the occasional bird. When we got tired, we sat on a flat rock and watched the light fall through the leaves.",
    "This report summarises user feedback from the last quarter. Most users like the new layout; several asked for a dark mode and larger fonts, and a few reported that search results load slowly on older phones.",
    "Cooking can be surprisingly relaxing. While chopping vegetables you don't think about work, only about the knife and the board, and by the time the pan starts to smell good the day's stress has melted away.",
    "Artificial intelligence is changing many industries, but it is not magic. A useful system needs reliable data, a clear goal, and people who take responsibility for its results.",
    "There was a pomegranate tree in my grandmother's yard. Every summer it was covered in red flowers, and in autumn the fruit weighed the branches down so low that we could pick them standing on a small stool.",
    "Send the agenda before the meeting, discuss only what is on it, and end by agreeing who owns each action and by when. Meetings run that way are short and actually useful.",
    "A rainy weekend is perfect for reading at home. Make a pot of tea, listen to the rain against the window, and even an ordinary story starts to feel a little more magical.",
    "After training, evaluate the model on a held-out validation set, then read through a sample of real outputs by hand to make sure it behaves well in practice.",
    "Travel is not only about seeing new places. It is about meeting people who live differently, listening to their stories, and coming home to see your own routines with fresh eyes.",
    "The train pulled slowly out of the station, and the apartment blocks gave way to fields. The little boy in the next seat counted cows out loud and fell asleep somewhere after number ten.",
    "Good names save comments. When a function does one thing and its name says what that is, a reader understands it at a glance.",
    "The library is closed on Mondays. On other days it opens at nine in the morning and closes at nine in the evening. You can borrow up to five books at a time for one month.",
    "Spring arrived overnight and the cherry trees in the park burst into bloom. On Saturday the paths were full of people taking photos, having picnics, or simply sitting on benches in the sun.",
)
CODE_SNIPPETS = (
    'def greet(name: str) -> str:\n    """Return a friendly greeting."""\n    return f"Hello, {name}!"\n\n\nprint(greet("world"))\n',
    "import json\n\nwith open(\"data.jsonl\", encoding=\"utf-8\") as handle:\n    rows = [json.loads(line) for line in handle if line.strip()]\nprint(len(rows), \"rows\")\n",
    "for i in range(1, 16):\n    if i % 15 == 0:\n        print(\"FizzBuzz\")\n    elif i % 3 == 0:\n        print(\"Fizz\")\n    elif i % 5 == 0:\n        print(\"Buzz\")\n    else:\n        print(i)\n",
    "class Counter:\n    def __init__(self) -> None:\n        self.count = 0\n\n    def increment(self, step: int = 1) -> int:\n        self.count += step\n        return self.count\n",
    "$ git status\n$ git add README.md\n$ git commit -m \"Fix typo in README\"\n$ git push origin main\n",
    "SELECT name, COUNT(*) AS orders\nFROM customers JOIN orders ON orders.customer_id = customers.id\nGROUP BY name\nORDER BY orders DESC\nLIMIT 10;\n",
)


def _arith(rng: random.Random, zh: bool) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    if zh:
        word = {"+": "加", "-": "减", "*": "乘以"}[op]
        return f"{a}{word}{b}等于多少？", f"{a}{word}{b}等于{value}。"
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    return f"What is {a} {word} {b}?", f"{a} {word} {b} is {value}."


def _translation(rng: random.Random, zh: bool) -> tuple[str, str]:
    en, cn = rng.choice(TRANSLATIONS)
    if zh:
        return f"“{en}”用中文怎么说？", f"“{en}”的中文是“{cn}”。"
    return f'How do you say "{cn}" in English?', f'"{cn}" in English is "{en}".'


def _answer(rng: random.Random, topic: Topic, zh: bool, size: str) -> str:
    short, more = (topic.zh_a, topic.zh_more) if zh else (topic.en_a, topic.en_more)
    closings = CLOSINGS_ZH if zh else CLOSINGS_EN
    sep = "" if zh else " "
    if size == "short":
        return short
    if size == "medium":
        picked = rng.sample(more, k=min(2, len(more)))
        return sep.join([short, *picked])
    # Long: every detail as a numbered list, a second related topic, and a closing line.
    other = rng.choice([t for t in TOPICS if t is not topic])
    other_more = other.zh_more if zh else other.en_more
    lead = rng.choice(LEAD_IN_ZH if zh else LEAD_IN_EN)
    lines = [short, "", lead, ""]
    lines += [f"{i}. {s}" for i, s in enumerate(more, 1)]
    lines += ["", ("另外，" if zh else "On a related note: ") + (other.zh_a if zh else other.en_a)]
    lines += [sep.join(other_more)]
    fq, fa = topic.zh_follow if zh else topic.en_follow
    lines += ["", ("常见问题：" if zh else "A common question: ") + fq, fa]
    lines += ["", rng.choice(closings)]
    return "\n".join(lines)


def _size(rng: random.Random) -> str:
    r = rng.random()
    return "short" if r < 0.62 else "medium" if r < 0.82 else "long"


def make_conversation(rng: random.Random) -> list[dict[str, str]]:
    zh = rng.random() < 0.5
    kind = rng.random()
    messages: list[dict[str, str]] = []
    if rng.random() < 0.2:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS_ZH if zh else SYSTEM_PROMPTS_EN)})
    if kind < 0.12:
        q, a = rng.choice(GREETINGS_ZH if zh else GREETINGS_EN)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    elif kind < 0.2:
        q, a = _arith(rng, zh)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    elif kind < 0.28:
        q, a = _translation(rng, zh)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    else:
        topic = rng.choice(TOPICS)
        size = _size(rng)
        q = rng.choice(topic.zh_q if zh else topic.en_q)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": _answer(rng, topic, zh, size)}]
        turns = rng.random()
        if turns < 0.35:
            fq, fa = topic.zh_follow if zh else topic.en_follow
            messages += [{"role": "user", "content": fq}, {"role": "assistant", "content": fa}]
            if turns < 0.12:
                tq, ta = rng.choice(THANKS_ZH if zh else THANKS_EN)
                messages += [{"role": "user", "content": tq}, {"role": "assistant", "content": ta}]
        elif turns < 0.45 and size == "short":
            more = topic.zh_more if zh else topic.en_more
            lead = rng.choice(LEAD_IN_ZH if zh else LEAD_IN_EN)
            sep = "" if zh else " "
            messages += [
                {"role": "user", "content": rng.choice(MORE_ZH if zh else MORE_EN)},
                {"role": "assistant", "content": lead + sep + sep.join(more)},
            ]
    return messages


def make_bilingual_chat(n: int = N_CONVERSATIONS, seed: int = SEED) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [make_conversation(rng) for _ in range(n)]


def make_corpus() -> dict[str, str]:
    zh_parts: list[str] = []
    en_parts: list[str] = []
    for t in TOPICS:
        zh_parts.append("\n".join([*t.zh_q, t.zh_a, "".join(t.zh_more), *t.zh_follow]))
        en_parts.append("\n".join([*t.en_q, t.en_a, " ".join(t.en_more), *t.en_follow]))
    zh_parts += [f"{q}\n{a}" for q, a in GREETINGS_ZH + THANKS_ZH]
    en_parts += [f"{q}\n{a}" for q, a in GREETINGS_EN + THANKS_EN]
    zh_parts += list(PROSE_ZH) + list(SYSTEM_PROMPTS_ZH) + list(CLOSINGS_ZH)
    en_parts += list(PROSE_EN) + list(SYSTEM_PROMPTS_EN) + list(CLOSINGS_EN) + list(CODE_SNIPPETS)
    mixed: list[str] = []
    for en, cn in TRANSLATIONS:
        mixed.append(f"{en} = {cn}\n“{en}”的中文是“{cn}”。\n\"{cn}\" in English is \"{en}\".")
    # Rendered dialogues (plain "user: ..." lines, never ChatML markers) add the
    # mixing of questions, numbers and lists the chat data has.
    rng = random.Random(SEED + 1)
    for _ in range(400):
        conv = make_conversation(rng)
        lines = []
        for m in conv:
            zh = any("\u4e00" <= ch <= "\u9fff" for ch in m["content"])
            name = {"system": ("系统", "system"), "user": ("用户", "user"), "assistant": ("助手", "assistant")}[m["role"]]
            lines.append(f"{name[0] if zh else name[1]}: {m['content']}")
        mixed.append("\n".join(lines))
    return {
        "zh.txt": "\n\n".join(zh_parts) + "\n",
        "en.txt": "\n\n".join(en_parts) + "\n",
        "dialogues.txt": "\n\n".join(mixed) + "\n",
    }


# -- preference pairs ------------------------------------------------------------------------
# A house style the base model never writes: the concise, correct answer opened by a short lead
# ("In short: " / "简单说："). On every question (topics, sums, translations) it is chosen over
# the same answer without the lead (what the base says: ~50% of those pairs), over the answer
# buried in filler (stock openers, padding, closers) and over a wrong answer in the house style
# (another topic's answer, a wrong sum, another translation), so the preference is style and
# correctness at once. Greetings prefer the plain concise answer over a rambling one (a lead
# before "Hello!" reads oddly). The base prefers the unstyled answer, so a short DPO run has
# something to learn that a held-out split and greedy chat can show; a set of concise answers
# against rambling ones alone did not: the base, pre-trained on those concise answers, already
# preferred them on 90% of held-out pairs.

PREFERENCE_SEED = SEED + 18
HOUSE_LEAD_ZH, HOUSE_LEAD_EN = "简单说：", "In short: "
RAMBLE_OPEN_EN = (
    "Well, that is a really interesting question, and there is honestly a lot one could say about it.",
    "Oh, great question! Let me think about this for a moment before I answer, because it deserves care.",
    "Hmm, okay, so before getting to the actual answer, let me say a few general words first.",
    "That is something many people wonder about, so let me take the long way around to explain it.",
)
RAMBLE_MID_EN = (
    "As I said, there are many ways to look at this, and people often have different opinions.",
    "To be honest, it depends on a lot of things, and I could go on about it for quite a while.",
    "Of course, this is just one way of putting it, and there may be other ways as well.",
    "In any case, it is always good to keep an open mind and to think about it carefully.",
)
RAMBLE_CLOSE_EN = (
    "Anyway, I hope this long explanation was somewhat helpful, and sorry for going on and on!",
    "So yes, that is more or less it, I think, although I may have wandered off a bit there.",
    "Well, I have talked for a long time now, so let me stop here, but there is much more to say!",
)
RAMBLE_OPEN_ZH = (
    "嗯，这是一个非常有意思的问题，说实话可以聊的东西真的很多很多。",
    "哦，好问题！在回答之前，我想先绕个弯子，从比较远的地方慢慢说起。",
    "好的，那么在进入正题之前，请允许我先说几句比较笼统的话。",
    "这个问题很多人都想过，所以我打算多花点时间，从头到尾详细地讲一讲。",
)
RAMBLE_MID_ZH = (
    "正如我刚才说的，看待这件事的角度有很多，每个人的想法都可能不一样。",
    "老实说，这要看很多因素，我可以就这个话题说上很久很久。",
    "当然，这只是其中一种说法，也许还有别的说法，这个就见仁见智了。",
    "总之，保持开放的心态、多想一想，总归是没有坏处的。",
)
RAMBLE_CLOSE_ZH = (
    "总之，希望我这一大段啰嗦的解释多少有点用，不好意思说了这么多！",
    "所以嘛，大概就是这样吧，虽然我好像有点跑题了。",
    "好了，我已经说了很久了，就先到这里吧，不过其实还有很多可以说的！",
)


def _ramble(rng: random.Random, answer: str, zh: bool) -> str:
    opens, mids, closes = (RAMBLE_OPEN_ZH, RAMBLE_MID_ZH, RAMBLE_CLOSE_ZH) if zh else \
        (RAMBLE_OPEN_EN, RAMBLE_MID_EN, RAMBLE_CLOSE_EN)
    sep = "" if zh else " "
    parts = [rng.choice(opens), *rng.sample(mids, k=2), answer, rng.choice(mids),
             rng.choice(closes)]
    return sep.join(parts)


def _pair(system: str | None, question: str, chosen: str, rejected: str) -> dict:
    prompt = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": question}]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def house_style(answer: str, zh: bool) -> str:
    return (HOUSE_LEAD_ZH if zh else HOUSE_LEAD_EN) + answer


def make_preference_pairs(seed: int = PREFERENCE_SEED) -> list[dict]:
    """The bundled preference set: ~400 pairs on ~340 prompts (every topic question in both
    languages, greetings, arithmetic, translations). A question's house-style answer is chosen
    over the unstyled one (~50%), a rambling one (~25%) or a wrong one in the house style (~25%);
    greetings are concise against rambling. Some prompts have two pairs, some a system message."""
    rng = random.Random(seed)
    pairs: list[dict] = []

    def system(zh: bool) -> str | None:
        return rng.choice(SYSTEM_PROMPTS_ZH if zh else SYSTEM_PROMPTS_EN) if rng.random() < 0.15 \
            else None

    def ask(sys_msg: str | None, question: str, answer: str, wrong: str, zh: bool) -> None:
        """One pair, sometimes two: the house-style answer against the unstyled one (drawn
        twice as often), a rambling one, or the wrong answer in the house style."""
        rejected = {"plain": lambda: answer, "ramble": lambda: _ramble(rng, answer, zh),
                    "wrong": lambda: house_style(wrong, zh)}
        picked = rng.choices(list(rejected), weights=[2, 1, 1])
        if rng.random() < 0.2:
            picked.append(rng.choice([k for k in rejected if k != picked[0]]))
        for kind in picked:
            pairs.append(_pair(sys_msg, question, house_style(answer, zh), rejected[kind]()))

    for topic in TOPICS:
        for zh in (True, False):
            for question in (topic.zh_q if zh else topic.en_q):
                wrong = rng.choice([t for t in TOPICS if t is not topic])
                ask(system(zh), question, topic.zh_a if zh else topic.en_a, wrong.zh_a if zh else wrong.en_a, zh)
    for zh, greetings in ((True, GREETINGS_ZH), (False, GREETINGS_EN)):
        for question, answer in greetings:
            pairs.append(_pair(system(zh), question, answer, _ramble(rng, answer, zh)))
    seen: set[str] = set()
    while len(seen) < 40:
        zh = len(seen) % 2 == 0
        question, answer = _arith(rng, zh)
        if question in seen:
            continue
        seen.add(question)
        value = re.search(r"(-?\d+)[。.]$", answer)
        off = rng.choice((-10, -2, -1, 1, 2, 10))
        ask(system(zh), question, answer, answer[:value.start(1)] + str(int(value.group(1)) + off) +
            answer[value.end(1):], zh)
    for zh in (True, False):
        for k, (en, cn) in enumerate(TRANSLATIONS):
            other_en, other_cn = TRANSLATIONS[(k + 1 + rng.randrange(len(TRANSLATIONS) - 1))
                                              % len(TRANSLATIONS)]
            if zh:
                ask(system(zh), f"“{en}”用中文怎么说？", f"“{en}”的中文是“{cn}”。", f"“{en}”的中文是“{other_cn}”。", zh)
            else:
                ask(system(zh), f'How do you say "{cn}" in English?', f'"{cn}" in English is "{en}".',
                    f'"{cn}" in English is "{other_en}".', zh)
    rng.shuffle(pairs)
    return pairs


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    path.chmod(0o644)  # mkstemp's 0600 would hide the file from a non-root container user


def _write_jsonl(path: Path, rows: list[list[dict[str, str]]]) -> None:
    _write(path, "".join(json.dumps({"conversations": r}, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    corpus_dir = ASSETS / "corpus"
    for name, text in make_corpus().items():
        _write(corpus_dir / name, text)
    _write_jsonl(ASSETS / "datasets" / "bilingual_chat.jsonl", make_bilingual_chat())
    _write(ASSETS / "datasets" / "preference_pairs.jsonl",
           "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in make_preference_pairs()))
    _write_jsonl(
        ASSETS / "datasets" / "qa_facts.jsonl",
        [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA_FACTS],
    )


if __name__ == "__main__":
    main()
