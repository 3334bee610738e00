//! [`counter_set!`](crate::counter_set): a backend's own counters, declared once.

/// Declares a backend's own counters once: a live struct of [`Count`](crate::hub::Count)s
/// that the backend bumps, and its `#[non_exhaustive]` snapshot of `u64`s with the same field
/// names and docs, with `snapshot()` and `fields()` (every counter as `(name, value)`, in
/// declaration order, for printing or exporting without listing the fields again).
///
/// ```
/// completion_core::counter_set! {
///     /// Live counters of one instance.
///     pub(crate) struct Stats;
///     /// What [`Stats`] counted so far.
///     pub struct MyStats {
///         /// Messages received.
///         messages,
///         /// Reconnects.
///         reconnects,
///     }
/// }
///
/// let stats = Stats::default();
/// stats.messages.bump();
/// assert_eq!(stats.snapshot().messages, 1);
/// assert_eq!(stats.snapshot().fields(), [("messages", 1), ("reconnects", 0)]);
/// ```
#[macro_export]
macro_rules! counter_set {
    (
        $(#[$live_meta:meta])*
        $live_vis:vis struct $live:ident;
        $(#[$snap_meta:meta])*
        pub struct $snap:ident {
            $( $(#[$field_meta:meta])* $field:ident ),* $(,)?
        }
    ) => {
        $(#[$live_meta])*
        #[derive(Debug, Default)]
        $live_vis struct $live {
            $( $(#[$field_meta])* pub $field: $crate::hub::Count, )*
        }

        impl $live {
            /// The current values.
            pub fn snapshot(&self) -> $snap {
                $snap { $( $field: self.$field.get(), )* }
            }
        }

        $(#[$snap_meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct $snap {
            $( $(#[$field_meta])* pub $field: u64, )*
        }

        impl $snap {
            /// Every counter as `(name, value)`, in declaration order.
            pub fn fields(&self) -> ::std::vec::Vec<(&'static str, u64)> {
                ::std::vec![ $( (stringify!($field), self.$field), )* ]
            }
        }
    };
}
