//! What keys do to the console's state: tab switching, and per tab its navigation and
//! the text fields that capture keys (the connections search, the blacklist form, the
//! tail's uid picker). It changes [`App`] and returns the [`Action`]s a key asks of the
//! server; it must not do I/O or read the clock.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use shared::admin::BlacklistKind;

use super::{Action, App, BlacklistForm, FormField, Tab, TailState};

impl App {
    /// Handles a key; returns what it asks of the server.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c')) {
            self.quit = true;
            return None;
        }
        if self.capturing() {
            return match self.tab {
                Tab::Dashboard | Tab::Service => None,
                Tab::Connections => self.conns_capture(key.code),
                Tab::Blacklist => self.blacklist_capture(key.code),
                Tab::Tail => self.tail_input(key.code),
            };
        }
        match key.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return None;
            }
            KeyCode::Tab | KeyCode::Right => return self.switch(self.tab.step(1)),
            KeyCode::BackTab | KeyCode::Left => return self.switch(self.tab.step(-1)),
            KeyCode::Char(c @ '1'..='5') => {
                return self.switch(Tab::ALL[usize::from(c as u8 - b'1')]);
            }
            KeyCode::Char('r') => return Some(Action::Refresh),
            _ => {}
        }
        match self.tab {
            Tab::Dashboard => None,
            Tab::Connections => self.conns_key(key.code),
            Tab::Blacklist => self.blacklist_key(key.code),
            Tab::Tail => self.tail_key(key.code),
            Tab::Service => {
                self.service_key(key.code);
                None
            }
        }
    }

    fn switch(&mut self, tab: Tab) -> Option<Action> {
        self.tab = tab;
        Some(Action::Refresh)
    }

    fn conns_capture(&mut self, code: KeyCode) -> Option<Action> {
        let v = &mut self.conns;
        if let Some(uid) = v.confirm.clone() {
            v.confirm = None;
            return matches!(code, KeyCode::Char('y' | 'Y')).then_some(Action::Kick(uid));
        }
        match code {
            KeyCode::Enter | KeyCode::Esc => v.editing = false,
            KeyCode::Backspace => {
                v.search.pop();
            }
            KeyCode::Char(c) => v.search.push(c),
            KeyCode::Down => v.selected += 1,
            KeyCode::Up => v.selected = v.selected.saturating_sub(1),
            _ => {}
        }
        v.clamp();
        None
    }

    fn conns_key(&mut self, code: KeyCode) -> Option<Action> {
        let v = &mut self.conns;
        match code {
            KeyCode::Char('/' | 's') => v.editing = true,
            KeyCode::Esc => v.search.clear(),
            KeyCode::Down => v.selected += 1,
            KeyCode::Up => v.selected = v.selected.saturating_sub(1),
            KeyCode::Home => v.selected = 0,
            KeyCode::End => v.selected = usize::MAX,
            KeyCode::Char('k') => {
                let uid = v.visible().get(v.selected).map(|c| c.uid.clone());
                match uid {
                    Some(uid) => v.confirm = Some(uid),
                    None => self.say("no connection selected", true),
                }
            }
            _ => {}
        }
        self.conns.clamp();
        None
    }

    fn blacklist_capture(&mut self, code: KeyCode) -> Option<Action> {
        let v = &mut self.blacklist;
        if let Some((kind, value)) = v.confirm.take() {
            return matches!(code, KeyCode::Char('y' | 'Y'))
                .then_some(Action::RemoveBlacklist(kind, value));
        }
        let form = v.form.as_mut()?;
        match code {
            KeyCode::Esc => v.form = None,
            KeyCode::Enter => match form.request() {
                Ok(req) => {
                    v.form = None;
                    return Some(Action::AddBlacklist(req));
                }
                Err(e) => form.error = Some(e),
            },
            KeyCode::Tab | KeyCode::Down => form.field = form.field.step(1),
            KeyCode::BackTab | KeyCode::Up => form.field = form.field.step(-1),
            KeyCode::Left | KeyCode::Right | KeyCode::Char(' ')
                if form.field == FormField::Kind =>
            {
                form.toggle_kind();
            }
            KeyCode::Char('u') if form.field == FormField::Kind => form.kind = BlacklistKind::Uid,
            KeyCode::Char('i') if form.field == FormField::Kind => form.kind = BlacklistKind::Ip,
            KeyCode::Backspace => {
                if let Some(t) = form.text_mut() {
                    t.pop();
                }
            }
            KeyCode::Char(c) => {
                if let Some(t) = form.text_mut() {
                    t.push(c);
                }
            }
            _ => {}
        }
        None
    }

    fn blacklist_key(&mut self, code: KeyCode) -> Option<Action> {
        let v = &mut self.blacklist;
        match code {
            KeyCode::Char('a' | '+') => v.form = Some(BlacklistForm::default()),
            KeyCode::Char('d' | '-') | KeyCode::Delete => match v.entries.get(v.selected) {
                Some(e) => v.confirm = Some((e.kind, e.value.clone())),
                None => self.say("no entry selected", true),
            },
            KeyCode::Down => {
                v.selected = (v.selected + 1).min(v.entries.len().saturating_sub(1));
            }
            KeyCode::Up => v.selected = v.selected.saturating_sub(1),
            _ => {}
        }
        None
    }

    fn tail_input(&mut self, code: KeyCode) -> Option<Action> {
        let input = self.tail.input.as_mut()?;
        match code {
            KeyCode::Esc => self.tail.input = None,
            KeyCode::Enter => {
                let conv = input.trim().to_owned();
                if conv.is_empty() {
                    return None;
                }
                self.tail.input = None;
                self.tail.conv = Some(conv.clone());
                self.tail.msgs.clear();
                self.tail.state = TailState::Connecting;
                self.tail.generation += 1;
                return Some(Action::StartTail(conv));
            }
            KeyCode::Backspace => {
                input.pop();
            }
            KeyCode::Char(c) => input.push(c),
            _ => {}
        }
        None
    }

    fn tail_key(&mut self, code: KeyCode) -> Option<Action> {
        match code {
            KeyCode::Char('c' | '/') | KeyCode::Enter => {
                self.tail.input = Some(self.tail.conv.clone().unwrap_or_default());
                None
            }
            KeyCode::Char('x') if self.tail.conv.is_some() => {
                self.tail.conv = None;
                self.tail.state = TailState::Idle;
                self.tail.generation += 1;
                Some(Action::StopTail)
            }
            KeyCode::Char('C') => {
                self.tail.msgs.clear();
                None
            }
            _ => None,
        }
    }

    fn service_key(&mut self, code: KeyCode) {
        let v = &mut self.service;
        match code {
            KeyCode::Down => v.selected += 1,
            KeyCode::Up => v.selected = v.selected.saturating_sub(1),
            KeyCode::Home => v.selected = 0,
            KeyCode::End => v.selected = usize::MAX,
            _ => {}
        }
        v.clamp();
    }
}
