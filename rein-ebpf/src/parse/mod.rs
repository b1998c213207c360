//! Reading packets: from the network header on, as cgroup_skb programs see them (`skb`), or as
//! whole frames, as tc and XDP programs see them (`frame`).

pub mod frame;
pub mod skb;
pub mod tuple;
