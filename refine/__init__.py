"""trustmap.refine: find and fix wrong land-cover labels under an annotation budget."""
