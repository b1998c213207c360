//! Steps taken so far, undone in reverse if the operation fails: bad input or a failure midway
//! leaves the system as it was.
#[derive(Default)]
#[must_use = "an Undo that is dropped undoes everything; call commit() on success"]
pub struct Undo {
    steps: Vec<Box<dyn FnOnce()>>,
}

impl Undo {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers how to undo the step just taken.
    pub fn push(&mut self, step: impl FnOnce() + 'static) {
        self.steps.push(Box::new(step));
    }

    /// The operation succeeded: keep everything.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(step) = self.steps.pop() {
            step();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    #[test]
    fn undoes_in_reverse_unless_committed() {
        let log = Rc::new(RefCell::new(Vec::new()));
        {
            let mut undo = Undo::new();
            for i in 0..3 {
                let log = Rc::clone(&log);
                undo.push(move || log.borrow_mut().push(i));
            }
        }
        assert_eq!(*log.borrow(), vec![2, 1, 0]);
        let mut undo = Undo::new();
        let inner = Rc::clone(&log);
        undo.push(move || inner.borrow_mut().push(9));
        undo.commit();
        assert_eq!(*log.borrow(), vec![2, 1, 0]);
    }
}
