"""streamrec: an event-driven streaming recommender on Kafka, Faust and an item-token language model."""

__version__ = "0.1.0"
