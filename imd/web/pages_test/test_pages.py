"""The chat widget and the agent console, in a real browser, against a real imd.

A customer (chat.html) and an agent (console.html), each in a browser context of
their own, talk through imd; every check reads what a page shows, by its
data-testid attributes. Each test uses a shop and uids of its own.
"""

import re

from playwright.sync_api import Page, expect


def sign_in_agent(person, imd, uid: str) -> Page:
    page = person(f"{imd.url}/console/?uid={uid}", uid)
    expect(page.get_by_test_id("me")).to_have_text(uid)
    expect(page.get_by_test_id("connection")).to_have_text("Online")
    return page


def open_chat(person, imd, shop: str, uid: str) -> Page:
    page = person(f"{imd.url}/chat/?shop={shop}&uid={uid}", uid)
    expect(page.get_by_test_id("me")).to_have_text(uid)
    expect(page.get_by_test_id("connection")).to_have_text("Online")
    return page


def say(page: Page, text: str):
    page.get_by_test_id("compose").fill(text)
    page.get_by_test_id("send").click()


def message(page: Page, text: str):
    return page.get_by_test_id("messages").get_by_test_id("message").filter(has_text=text)


def conversation_row(page: Page, conv: str):
    return page.locator(f'[data-testid=conversation][data-conv="{conv}"]')


def test_a_customer_and_an_agent_chat_with_read_ticks_typing_close_and_rating(imd, person):
    imd.set_shop("demo", ["ann"], welcome={"text": "Welcome to the demo shop!"})
    agent = sign_in_agent(person, imd, "ann")
    expect(agent.get_by_test_id("availability")).to_have_text("Available")
    customer = open_chat(person, imd, "demo", "carol")
    expect(customer.get_by_test_id("agent-status")).to_have_attribute("data-state", "new")

    # The customer writes; the shop welcomes her and the agent is assigned.
    say(customer, "Is the blue one in stock?")
    question = message(customer, "Is the blue one in stock?")
    expect(question).to_have_attribute("data-mine", "true")
    expect(customer.get_by_test_id("event").filter(has_text="ann joined the conversation")).to_be_visible()
    expect(customer.get_by_test_id("agent-status")).to_have_text("You are talking to ann.")
    expect(message(customer, "Welcome to the demo shop!")).to_have_attribute("data-from", "shop:demo")
    expect(question.get_by_test_id("tick")).to_have_attribute("data-state", "sent")

    # The agent sees the conversation with an unread count before opening it.
    row = conversation_row(agent, "s:demo~carol")
    expect(row.get_by_test_id("unread")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(row.get_by_test_id("preview")).not_to_be_empty()
    expect(question.get_by_test_id("tick")).to_have_attribute("data-state", "sent")

    # Opening it shows the message and reads it: the badge goes, the customer sees a tick.
    row.get_by_role("button").click()
    expect(message(agent, "Is the blue one in stock?")).to_have_attribute("data-from", "carol")
    expect(agent.get_by_test_id("conv-state")).to_have_attribute("data-state", "mine")
    expect(row.get_by_test_id("unread")).to_be_hidden()
    expect(question.get_by_test_id("tick")).to_have_attribute("data-state", "read")
    expect(question.get_by_test_id("tick")).to_have_text("✓✓ Read")

    # The agent types, then replies; the customer sees both.
    agent.get_by_test_id("compose").press_sequentially("Yes")
    expect(customer.get_by_test_id("typing")).to_have_text("ann is typing…")
    say(agent, "Yes, in M and L.")
    reply = message(customer, "Yes, in M and L.")
    expect(reply).to_have_attribute("data-from", "ann")
    expect(customer.get_by_test_id("typing")).to_have_text("")
    # The customer's page read it while showing it: the agent's reply gets its tick.
    expect(message(agent, "Yes, in M and L.").get_by_test_id("tick")).to_have_attribute("data-state", "read")

    # The customer types; the agent sees it.
    customer.get_by_test_id("compose").press_sequentially("Gre")
    expect(agent.get_by_test_id("typing")).to_have_text("carol is typing…")
    customer.get_by_test_id("compose").fill("Great, thanks!")
    customer.get_by_test_id("send").click()
    expect(message(agent, "Great, thanks!")).to_be_visible()
    expect(agent.get_by_test_id("typing")).to_have_text("")

    # The agent closes; the customer is asked for a rating, gives one, and is thanked.
    agent.get_by_test_id("close").click()
    expect(agent.get_by_test_id("conv-state")).to_have_attribute("data-state", "closed")
    expect(agent.get_by_test_id("close")).to_be_disabled()
    expect(customer.get_by_test_id("agent-status")).to_have_attribute("data-state", "closed")
    expect(customer.get_by_test_id("event").filter(has_text="The conversation was closed")).to_be_visible()
    rating = customer.get_by_test_id("rating")
    expect(rating).to_be_visible()
    rating.get_by_label("5").check()
    customer.get_by_test_id("rating-comment").fill("Quick and friendly")
    customer.get_by_test_id("rate").click()
    expect(customer.get_by_test_id("thanks")).to_be_visible()
    expect(rating).to_be_hidden()

    # The agent's page shows the rating, in the conversation and in the list.
    expect(agent.get_by_test_id("event").filter(has_text="Rated 5/5")).to_contain_text("Quick and friendly")
    expect(row).to_have_attribute("data-state", "closed")
    expect(row.get_by_test_id("preview")).to_contain_text("Rated 5/5")

    # A reload shows the same conversation from history, and a new page of the
    # customer's still knows it was rated.
    customer.reload()
    expect(customer.get_by_test_id("connection")).to_have_text("Online")
    expect(message(customer, "Yes, in M and L.")).to_be_visible()
    expect(customer.get_by_test_id("thanks")).to_be_visible()


def test_customers_wait_in_the_queue_while_the_agent_is_away_and_move_up(imd, person):
    imd.set_shop("queued", ["bob"], away={"text": "We are away; we will answer soon."})
    agent = sign_in_agent(person, imd, "bob")
    agent.get_by_test_id("away").check()
    expect(agent.get_by_test_id("availability")).to_have_text("Away")
    expect(agent.locator("[data-testid=colleague][data-uid=bob]")).to_have_attribute("data-state", "away")

    first = open_chat(person, imd, "queued", "dave")
    say(first, "Anyone there?")
    expect(message(first, "We are away; we will answer soon.")).to_be_visible()
    expect(first.get_by_test_id("queue")).to_have_text("You are number 1 in the queue.")
    second = open_chat(person, imd, "queued", "erin")
    say(second, "Hello?")
    expect(second.get_by_test_id("queue")).to_have_text("You are number 2 in the queue.")
    expect(second.get_by_test_id("agent-status")).to_have_attribute("data-state", "waiting")

    # The console's queue lists both, in order.
    waiting = agent.get_by_test_id("queue").get_by_test_id("waiting")
    expect(waiting).to_have_count(2)
    expect(waiting.nth(0)).to_have_attribute("data-conv", "s:queued~dave")
    expect(waiting.nth(1)).to_have_attribute("data-conv", "s:queued~erin")

    # Away, the agent still reads a waiting conversation and takes it by replying;
    # the other customer moves up.
    waiting.nth(0).get_by_role("button").click()
    expect(agent.get_by_test_id("conv-state")).to_have_attribute("data-state", "waiting")
    expect(message(agent, "Anyone there?")).to_be_visible()
    say(agent, "Hi Dave, I am here.")
    expect(message(first, "Hi Dave, I am here.")).to_have_attribute("data-from", "bob")
    expect(first.get_by_test_id("event").filter(has_text="bob joined the conversation")).to_be_visible()
    expect(first.get_by_test_id("queue")).to_be_hidden()
    expect(message(first, "Anyone there?").get_by_test_id("tick")).to_have_attribute("data-state", "read")
    expect(agent.get_by_test_id("conv-state")).to_have_attribute("data-state", "mine")
    expect(second.get_by_test_id("queue")).to_have_text("You are number 1 in the queue.")
    expect(waiting).to_have_count(1)

    # Back available: the queue drains to the agent.
    agent.get_by_test_id("available").check()
    expect(agent.get_by_test_id("availability")).to_have_text("Available")
    expect(second.get_by_test_id("event").filter(has_text="bob joined the conversation")).to_be_visible()
    expect(second.get_by_test_id("queue")).to_be_hidden()
    expect(second.get_by_test_id("agent-status")).to_have_text("You are talking to bob.")
    expect(waiting).to_have_count(0)
    row = conversation_row(agent, "s:queued~erin")
    expect(row).to_have_attribute("data-state", "open")
    expect(row.get_by_test_id("unread")).to_have_text(re.compile(r"^[1-9]"))


def test_an_agent_hands_a_conversation_to_a_colleague(imd, person):
    imd.set_shop("handover", ["kim", "lee"])
    kim = sign_in_agent(person, imd, "kim")
    customer = open_chat(person, imd, "handover", "max")
    say(customer, "My parcel is late.")
    # Both agents are available with nothing open; whoever gets it hands it over.
    joined = customer.get_by_test_id("event").filter(has_text="kim joined the conversation")
    expect(joined).to_be_visible()
    lee = sign_in_agent(person, imd, "lee")
    expect(kim.locator('[data-testid=colleague][data-uid=lee]')).to_have_attribute("data-state", "available")

    conversation_row(kim, "s:handover~max").get_by_role("button").click()
    expect(kim.get_by_test_id("conv-state")).to_have_attribute("data-state", "mine")
    kim.get_by_test_id("note").fill("Parcel 123 is at the depot.")
    kim.get_by_test_id("add-note").click()
    expect(kim.get_by_test_id("notes")).to_contain_text("Parcel 123 is at the depot.")
    kim.get_by_test_id("transfer-to").select_option("lee")
    kim.get_by_test_id("transfer").click()
    expect(kim.get_by_test_id("conv-state")).to_have_text("Open, assigned to lee.")

    expect(customer.get_by_test_id("event").filter(has_text="lee joined the conversation")).to_be_visible()
    expect(customer.get_by_test_id("agent-status")).to_have_text("You are talking to lee.")
    row = conversation_row(lee, "s:handover~max")
    row.get_by_role("button").click()
    expect(message(lee, "My parcel is late.")).to_be_visible()
    expect(lee.get_by_test_id("notes")).to_contain_text("Parcel 123 is at the depot.")
    say(lee, "It arrives tomorrow.")
    expect(message(customer, "It arrives tomorrow.")).to_have_attribute("data-from", "lee")
    # The customer never sees the notes.
    expect(customer.get_by_test_id("messages")).not_to_contain_text("Parcel 123")


def test_without_dev_tokens_the_pages_ask_for_a_pasted_token(imd_without_dev_tokens, person):
    server = imd_without_dev_tokens
    server.set_shop("paste", ["pat"])
    agent = person(f"{server.url}/console/", "pat")
    agent.get_by_test_id("uid").fill("pat")
    agent.get_by_test_id("signin-button").click()
    expect(agent.get_by_test_id("dev-off")).to_be_visible()
    expect(agent.get_by_test_id("signin-error")).to_contain_text("paste a token")
    agent.get_by_test_id("token").fill(server.token("pat", "console", role="agent"))
    agent.get_by_test_id("signin-button").click()
    expect(agent.get_by_test_id("me")).to_have_text("pat")
    expect(agent.get_by_test_id("connection")).to_have_text("Online")

    customer = person(f"{server.url}/chat/?shop=paste", "quinn")
    customer.get_by_test_id("name").fill("quinn")
    customer.get_by_test_id("start").click()
    expect(customer.get_by_test_id("dev-off")).to_be_visible()
    customer.get_by_test_id("token").fill(server.token("quinn"))
    customer.get_by_test_id("start").click()
    expect(customer.get_by_test_id("me")).to_have_text("quinn")
    say(customer, "Pasted tokens work too.")
    expect(customer.get_by_test_id("event").filter(has_text="pat joined the conversation")).to_be_visible()
    row = conversation_row(agent, "s:paste~quinn")
    expect(row.get_by_test_id("unread")).to_have_text(re.compile(r"^[1-9]"))
    row.get_by_role("button").click()
    expect(message(agent, "Pasted tokens work too.")).to_be_visible()
