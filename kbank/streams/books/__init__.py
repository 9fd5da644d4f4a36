"""The closes of the books as the components read them (issue 45): the model (closes),
where they are kept (store), the views' reader (shelf) and the trial balance (trial). The
tools that make them are kbank.books."""
