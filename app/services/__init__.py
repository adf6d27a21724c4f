"""Operations on the database shared by the web views and the command line."""
